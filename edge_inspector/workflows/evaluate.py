"""Evaluate: a bundle or a training checkpoint on the test split of an MVTec-layout folder.

A bundle is evaluated through ONNX Runtime: that is the graph that ships, so its numbers are the honest ones. A
training checkpoint (.pt) runs in torch; its normal statistics and thresholds are rebuilt from the holdout slice of
``<data>/train/good`` exactly as ``train`` and ``export`` build them. Writes ``result.json``, ``table.txt`` and a
few overlay images, and the plant view (``training.eval_report``): images.csv, report.html. A folder without
``ground_truth/`` (image-level labels only) gets image figures only: pixel AUROC and AUPRO need masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_inspector.bundle.store import load_bundle, read_manifest, save_manifest
from edge_inspector.bundle.thresholds import (ThresholdPolicy, f1_threshold, manifest_threshold_warning,
                                              small_holdout_warning)
from edge_inspector.config import EngineSettings
from edge_inspector.data.folders import Category, holdout_split, load_images, load_test_set, scan_category
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import BundleError, ConfigError
from edge_inspector.training.evaluate import Predictions, evaluate_predictions, predict_with_engine, predict_with_torch
from edge_inspector.training.heads import build_scorer
from edge_inspector.training.eval_report import plant_summary, write_plant_report
from edge_inspector.training.progress import phase
from edge_inspector.training.report import result_table, write_overlays, write_result
from edge_inspector.training.trainer import load_checkpoint

ENGINES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class EvalResult:
    """What ``evaluate`` measured and where it wrote it."""

    report: dict[str, Any]
    """The JSON-ready result (result.json) (metrics overall and per defect type, model, engine, thresholds, latency)."""
    out: Path
    """The folder holding result.json, table.txt and overlays/."""

    def summary(self) -> str:
        """The metrics table, the thresholds written into the bundle (if asked) and where everything went."""
        lines = [result_table(self.report), plant_summary(self.report)]
        if self.report.get("threshold_warning"):
            lines.append(f"warning     {self.report['threshold_warning']}")
        written = self.report.get("written_thresholds")
        if written:
            pixel = f", pixel {written['pixel']:.4g} (F1 {written['pixel_f1']:.3f})" if "pixel" in written else ""
            lines.append(f"thresholds  image {written['image']:.4g} (F1 {written['image_f1']:.3f}){pixel} "
                         f"written to {self.report['model']['path']}")
        return "\n".join([*lines, f"written to  {self.out}"])


@dataclass(frozen=True)
class _Scored:
    """A model's outputs on the test images and how it turns them into verdicts."""

    predictions: Predictions
    aggregation: str
    topk_fraction: float
    image_threshold: float
    pixel_threshold: float
    info: dict[str, Any]
    threshold_warning: str | None = None
    """Why the image threshold rests on too few held-back good images (``small_holdout_warning``), or None."""


def _score_bundle(path: Path, images: np.ndarray, threads: int, progress: bool) -> _Scored:
    bundle = load_bundle(path)
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=threads))
    try:
        predictions = predict_with_engine(engine, images, progress)
    finally:
        engine.close()
    m = bundle.manifest
    info = {"path": str(path), "model_id": m.model_id, "precision": m.quantization.precision, "head": m.score.head,
            **({"preset": m.training.preset, "attention": m.training.attention} if m.training else {})}
    return _Scored(predictions, m.score.aggregation, m.score.topk_fraction, m.thresholds.image, m.thresholds.pixel,
                   info, manifest_threshold_warning(m.thresholds, m.score.image))


def _score_checkpoint(path: Path, category: Category, thresholds: ThresholdPolicy, threads: int,
                      progress: bool) -> tuple[_Scored, np.ndarray, np.ndarray]:
    model, preset = load_checkpoint(path)
    if threads:
        torch.set_num_threads(threads)
    spec = preset.model
    _, holdout_paths = holdout_split(category, preset.train)
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=progress, desc="holdout")
    scorer, stats, choice = build_scorer(model, preset, holdout, progress=progress)
    chosen = stats.thresholds(thresholds)
    images, masks = load_test_set(category, spec.width, spec.height, spec.resize, progress=progress)
    predictions = predict_with_torch(scorer, images, progress=progress)
    info = {"path": str(path), "preset": preset.name, "attention": spec.attention, "head": choice.head}
    scored = _Scored(predictions, preset.score.aggregation, preset.score.topk_fraction, chosen.image, chosen.pixel,
                     info, small_holdout_warning(stats.image.n, thresholds.image_false_reject_rate))
    return scored, images, masks


def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    *,
    engine: str | None = None,
    threads: int = 0,
    overlays: int = 8,
    thresholds: ThresholdPolicy = ThresholdPolicy(),
    write_thresholds: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on the test split of ``data``; write result.json, table.txt and overlays to ``out``.

    Args:
        model: a bundle folder (runs on ONNX Runtime) or a training checkpoint ``.pt`` (runs in torch).
        data: MVTec-layout category folder with ``test/`` (and ``ground_truth/`` for the pixel figures).
        out: result folder (default ``runs/eval/<model>-<category>``).
        engine: ``onnxruntime`` (a bundle's only engine) or ``torch`` (a checkpoint's); default by ``model``.
        threads: inference threads (0 = every core).
        overlays: number of overlay images to write.
        thresholds: target rates for a checkpoint's rebuilt thresholds (a bundle brings its own).
        write_thresholds: store the F1-optimal image and pixel thresholds on this labelled set in the bundle (use a
            labelled calibration set, not the set you report on).
        progress: show progress bars.

    Raises:
        BundleError: ``model`` does not exist.
        ConfigError: an engine the model cannot run on, or ``write_thresholds`` for a checkpoint.
        DataError: the data folder lacks good or defective test images.
    """
    model_path = Path(model)
    if not model_path.exists():
        raise BundleError(f"--model {model_path}: no such bundle folder or checkpoint file")
    if engine is not None and engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    category = scan_category(data, require_test=True)
    is_bundle = model_path.is_dir()
    engine = engine or ("onnxruntime" if is_bundle else "torch")
    if is_bundle and engine != "onnxruntime":
        raise ConfigError(f"--engine {engine} needs a training checkpoint; a bundle runs on onnxruntime")
    if not is_bundle and engine != "torch":
        raise ConfigError(f"--engine {engine} needs a bundle; export the checkpoint first (edge-inspector export)")
    if write_thresholds and not is_bundle:
        raise ConfigError("--write-thresholds needs a bundle folder (a checkpoint has no manifest to write to)")
    if is_bundle:
        given = read_manifest(model_path).input
        images, masks = load_test_set(category, given.width, given.height, given.resize, given.pad_value,
                                      progress=progress)
        scored = _score_bundle(model_path, images, threads, progress)
    else:
        scored, images, masks = _score_checkpoint(model_path, category, thresholds, threads, progress)
    p = scored.predictions
    pixel_masks = masks if category.has_masks else None  # image-level labels only: no pixel figures
    with phase("metrics (AUROC, AUPRO overall and per defect type)", progress):
        result = evaluate_predictions(p, category, pixel_masks, scored.aggregation, scored.topk_fraction,
                                      scored.image_threshold, scored.pixel_threshold, scored.info)
    result["command"] = f"edge-inspector eval --model {model} --data {data}"
    result["threshold_warning"] = scored.threshold_warning
    folder = Path(out) if out else Path("runs") / "eval" / f"{scored.info.get('model_id', model_path.stem)}-{category.name}"
    if write_thresholds:
        with phase("F1-optimal thresholds", progress):
            result["written_thresholds"] = write_f1_thresholds(model_path, category, p, pixel_masks)
    result["plant"] = write_plant_report(folder, category, images, p.maps, masks, p.scores, scored.image_threshold,
                                         scored.pixel_threshold, result, result_table(result), progress=progress)
    write_result(folder, result)
    if overlays:
        write_overlays(folder, category, images, p.maps, masks, p.scores, scored.pixel_threshold, overlays,
                       image_threshold=scored.image_threshold)
    return EvalResult(result, folder)


def write_f1_thresholds(bundle_dir: Path, category: Category, predictions: Predictions,
                        masks: np.ndarray | None) -> dict[str, float]:
    """F1-optimal image and pixel thresholds on this labelled set, written into the bundle's manifest (the image
    threshold only when ``masks`` is None: image-level labels say nothing about pixels)."""
    labels = np.array([sample.is_anomalous for sample in category.test])
    image_thr, image_f1 = f1_threshold(predictions.scores, labels)
    manifest = load_bundle(bundle_dir).manifest.model_copy(deep=True)
    chosen = manifest.thresholds
    chosen.image, chosen.image_method, chosen.target_false_reject_rate = image_thr, "f1", None
    written = {"image": image_thr, "image_f1": image_f1}
    if masks is not None:
        pixel_thr, pixel_f1 = f1_threshold(predictions.maps, masks)
        chosen.pixel, chosen.pixel_method, chosen.target_pixel_false_positive_rate = pixel_thr, "f1", None
        written.update(pixel=pixel_thr, pixel_f1=pixel_f1)
    save_manifest(bundle_dir, manifest)
    return written
