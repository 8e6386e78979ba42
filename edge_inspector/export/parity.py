"""ONNX Runtime vs torch parity for an exported graph: the torch adapter of the parity kit (``engines.parity``).

Stated tolerance (FP32 graph, CPU): on every image, the largest absolute difference of the anomaly maps is at most
``MAP_RTOL`` times the largest torch map value, and each image score differs by at most ``SCORE_RTOL`` relative.
Both sides run the same float32 ops; the differences come from kernel order (e.g. conv algorithms), which stays
orders of magnitude below these bounds in practice. Verdicts are not compared here (no threshold is involved).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import OrtEngine, load_session
from edge_inspector.engines.parity import Outputs, ParityReport, compare_outputs, engine_outputs
from edge_inspector.errors import BundleError

MAP_RTOL = 1e-3
SCORE_RTOL = 1e-3


@torch.no_grad()
def torch_outputs(scorer: nn.Module, images: np.ndarray) -> Outputs:
    """Run ``images`` (N, H, W, 3) uint8 one by one through a scorer returning (maps (N, 1, H, W), scores (N,))."""
    scorer.eval()
    maps, scores = [], []
    for image in images:
        anomaly_map, score = scorer(torch.from_numpy(np.ascontiguousarray(image[None])))
        maps.append(anomaly_map[0, 0].numpy())
        scores.append(float(score[0]))
    return Outputs("torch", np.stack(maps), np.asarray(scores, np.float64))


def graph_outputs(graph: onnx.ModelProto, images: np.ndarray, threads: int = 1) -> Outputs:
    """Run ``images`` one by one through ``graph`` on the session the line's engine makes (``load_session``)."""
    session = load_session(graph, EngineSettings(intra_op_threads=threads)).session
    name = session.get_inputs()[0].name
    maps, scores = [], []
    for image in images:
        anomaly_map, score = session.run(None, {name: image[None]})
        maps.append(anomaly_map[0, 0])
        scores.append(float(score.reshape(-1)[0]))
    return Outputs("onnxruntime", np.stack(maps), np.asarray(scores, np.float64))


def graph_parity(scorer: nn.Module, graph: onnx.ModelProto, images: np.ndarray, threads: int = 1) -> ParityReport:
    """``graph`` in ONNX Runtime against ``scorer`` in torch, figures only (no tolerance judged)."""
    return compare_outputs(graph_outputs(graph, images, threads), torch_outputs(scorer, images), None, None)


def check_parity(scorer: nn.Module, bundle: Bundle, images: np.ndarray | None = None) -> ParityReport:
    """Run ``images`` (default: the bundle's calibration images) through torch and ONNX Runtime and compare.

    Raises:
        BundleError: no images, or the outputs differ beyond the stated tolerance.
    """
    images = bundle.calibration_images() if images is None else images
    if len(images) == 0:
        raise BundleError(f"{bundle.path}: no images to check parity on")
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1))
    try:
        onnx_side = engine_outputs(engine, images)
    finally:
        engine.close()
    report = compare_outputs(onnx_side, torch_outputs(scorer, images), None, ParitySpec(score_rtol=SCORE_RTOL),
                             map_rtol=MAP_RTOL)
    if not report.passed:
        raise BundleError(
            f"{bundle.onnx_path}: ONNX Runtime differs from torch beyond tolerance "
            f"(map {report.map_rel_diff:.2e} > {MAP_RTOL:g} or score {report.max_score_drift:.2e} > {SCORE_RTOL:g} "
            "relative)"
        )
    return report
