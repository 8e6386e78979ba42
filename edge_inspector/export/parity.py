"""ONNX Runtime vs torch parity for an exported bundle.

Stated tolerance (FP32 graph, CPU): on every image, the largest absolute difference of the anomaly maps is at most
``MAP_RTOL`` times the largest torch map value, and each image score differs by at most ``SCORE_RTOL`` relative.
Both sides run the same float32 ops; the differences come from kernel order (e.g. conv algorithms), which stays
orders of magnitude below these bounds in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import BundleError
from edge_inspector.training.scoring import AnomalyScorer

MAP_RTOL = 1e-3
SCORE_RTOL = 1e-3


@dataclass(frozen=True)
class ParityReport:
    n_images: int
    max_map_diff: float
    """Largest |ORT - torch| over all map pixels, divided by the largest torch map value."""
    max_score_diff: float
    """Largest relative image-score difference."""

    @property
    def ok(self) -> bool:
        return self.max_map_diff <= MAP_RTOL and self.max_score_diff <= SCORE_RTOL


@torch.no_grad()
def check_parity(scorer: AnomalyScorer, bundle: Bundle, images: np.ndarray | None = None) -> ParityReport:
    """Run ``images`` (default: the bundle's calibration images) through torch and ONNX Runtime and compare.

    Raises:
        BundleError: the outputs differ beyond the stated tolerance.
    """
    images = bundle.calibration_images() if images is None else images
    if len(images) == 0:
        raise BundleError(f"{bundle.path}: no images to check parity on")
    scorer.eval()
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1))
    map_diff = score_diff = 0.0
    try:
        for image in images:
            ref_map, ref_score = scorer(torch.from_numpy(np.ascontiguousarray(image[None])))
            ref_map, ref_score = ref_map[0, 0].numpy(), float(ref_score[0])
            out = engine.infer(image)
            scale = max(float(np.abs(ref_map).max()), 1e-12)
            map_diff = max(map_diff, float(np.abs(out.anomaly_map - ref_map).max()) / scale)
            score_diff = max(score_diff, abs(out.score - ref_score) / max(abs(ref_score), 1e-12))
    finally:
        engine.close()
    report = ParityReport(len(images), map_diff, score_diff)
    if not report.ok:
        raise BundleError(
            f"{bundle.onnx_path}: ONNX Runtime differs from torch beyond tolerance "
            f"(map {map_diff:.2e} > {MAP_RTOL:g} or score {score_diff:.2e} > {SCORE_RTOL:g} relative)"
        )
    return report
