"""Trained model -> model bundle, the only thing that crosses to the line: FP32 ONNX graph + manifest + calibration
images.

The graph is ``AnomalyScorer`` exported with a static shape: input ``image`` uint8 (1, H, W, 3) RGB (normalisation
inside the graph), outputs named after the fields of ``ScorerOutput`` (``anomaly_map`` (1, 1, H, W) and ``score``
(1,), both raw), and the manifest records those names. Thresholds go to the manifest, never into the graph, so the
line can tune them.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_inspector import __version__
from edge_inspector.bundle.manifest import (
    GraphSpec,
    InputSpec,
    Manifest,
    OutputSpec,
    ScoreSpec,
    Thresholds,
    TrainingInfo,
)
from edge_inspector.bundle.store import Bundle, sha256_file, write_bundle
from edge_inspector.log import kv
from edge_inspector.model.normal_stats import NormalStatistics
from edge_inspector.model.scorer import INPUT_NAME, AnomalyScorer, ScorerOutput

log = logging.getLogger(__name__)

OPSET = 21
"""Pinned: every graph we ship uses this opset (21 also allows true INT4 initializers for the quantizer)."""
OUTPUT_NAMES = ScorerOutput._fields
"""The graph's output names, in output order: the scorer's typed output defines them."""
N_CALIBRATION_IMAGES = 8


def export_onnx(scorer: AnomalyScorer, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``scorer`` to a single-file FP32 ONNX graph with a static (1, H, W, 3) uint8 input."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer = scorer.eval()
    example = torch.zeros(1, scorer.height, scorer.width, 3, dtype=torch.uint8)
    # The exporter logs a warning per torchvision op it cannot register and a deprecation note from torch.export;
    # neither concerns this graph, and they would drown the command's summary.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                scorer,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return path


def versions() -> dict[str, str]:
    import onnxruntime

    return {
        "edge_inspector": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def export_bundle(
    scorer: AnomalyScorer,
    out_dir: str | Path,
    model_name: str,
    resize: str,
    stats: NormalStatistics,
    thresholds: Thresholds,
    training: TrainingInfo | None,
    calibration_images: np.ndarray,
    metrics: dict[str, float] | None = None,
    head_probe: dict[str, dict[str, float]] | None = None,
) -> Bundle:
    """Export the graph and write the bundle folder (graph hash, manifest, calibration images).

    Args:
        scorer: a scorer whose ``mean_map`` was fitted on held-back normal training images.
        model_name: human part of the model id, e.g. 'magnetic_tile-haloae-lite'.
        resize: 'stretch' or 'letterbox', as the images were brought to the model size.
        calibration_images: uint8 (N, H, W, 3) held-back images; the first few ship for parity checks.
        head_probe: each candidate head's probe-set figures when the head was chosen automatically.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ei-export-") as tmp:
        onnx_path = export_onnx(scorer, Path(tmp) / "model.onnx")
        digest = sha256_file(onnx_path)
        manifest = Manifest(
            model_id=f"{model_name}-{digest[:8]}",
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            edge_inspector_version=__version__,
            graph=GraphSpec(file="model.onnx", sha256=digest, opset=OPSET),
            input=InputSpec(name=INPUT_NAME, width=scorer.width, height=scorer.height, resize=resize),
            outputs=OutputSpec(**{name: name for name in OUTPUT_NAMES}),
            score=ScoreSpec(
                head=scorer.head,
                head_probe=head_probe or {},
                aggregation=scorer.aggregation,
                topk_fraction=scorer.topk_fraction,
                blur_sigma=scorer.blur_sigma,
                image=stats.image,
                pixel=stats.pixel,
            ),
            thresholds=thresholds,
            training=training,
            metrics=metrics or {},
            versions=versions(),
        )
        bundle = write_bundle(out_dir, onnx_path, manifest, calibration_images[:N_CALIBRATION_IMAGES])
    log.info("bundle written", extra=kv(path=out_dir, model_id=manifest.model_id))
    return bundle
