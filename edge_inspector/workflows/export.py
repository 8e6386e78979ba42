"""Export: a trained model -> a model bundle (ONNX + manifest + calibration images), checked against torch.

Normal statistics and thresholds come from the holdout slice of ``<data>/train/good``: the same seeded split the
training used (same preset seed and fraction), so no image that shaped the weights shapes the thresholds.
``train`` ends with ``export_model``; ``export`` runs it on a checkpoint, e.g. to ship another scoring head
without retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge_inspector.bundle.manifest import InputSizeRecord, TrainingInfo
from edge_inspector.bundle.store import Bundle
from edge_inspector.bundle.thresholds import ThresholdPolicy, manifest_threshold_warning
from edge_inspector.data.folders import Category, data_fingerprint, holdout_split, load_images, scan_category
from edge_inspector.export.onnx_export import export_bundle
from edge_inspector.engines.parity import ParityReport
from edge_inspector.export.parity import check_parity
from edge_inspector.model.normal_stats import NormalStatistics
from edge_inspector.model.presets import Preset, with_score_overrides
from edge_inspector.model.scorer import AnomalyScorer
from edge_inspector.training.heads import HeadChoice, build_scorer
from edge_inspector.log import kv
from edge_inspector.training.trainer import load_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` (and the end of ``train``) produced."""

    bundle: Bundle
    parity: ParityReport
    """ONNX Runtime against torch on the bundle's calibration images."""
    stats: NormalStatistics
    """The held-back good images' scores, which the thresholds come from."""
    scorer: AnomalyScorer
    """The torch module that was exported."""
    head: HeadChoice
    """The scoring head shipped, with every candidate's probe figures when it was chosen automatically."""

    @property
    def threshold_warning(self) -> str | None:
        """Why the image threshold rests on too few held-back good images, or None."""
        m = self.bundle.manifest
        return manifest_threshold_warning(m.thresholds, m.score.image)

    def summary(self) -> str:
        """What was written, in a few lines for a person."""
        m = self.bundle.manifest
        image, pixel = self.stats.image, self.stats.pixel
        probe = "; ".join(f"{head} {v['image_auroc']:.3f} / {v['pixel_auroc']:.3f}"
                          for head, v in m.score.head_probe.items())
        chosen = f" (chosen on synthetic defects, image / pixel AUROC: {probe})" if probe else ""
        warning = self.threshold_warning
        return "\n".join([
            f"bundle      {self.bundle.path}  ({m.model_id}, opset {m.graph.opset}, "
            f"input {m.input.width}x{m.input.height} uint8 RGB, {m.input.resize})",
            f"holdout     {image.n} good training images kept out of fitting: image score mean {image.mean:.4g} "
            f"std {image.std:.4g} max {image.max:.4g}; pixel p99.9 {pixel.quantiles.get('0.999', float('nan')):.4g}",
            f"head        {m.score.head}{chosen}",
            f"thresholds  image {m.thresholds.image:.4g} (target false-reject rate "
            f"{m.thresholds.target_false_reject_rate}), pixel {m.thresholds.pixel:.4g}; score = {m.score.aggregation}",
            *([f"warning     {warning}"] if warning else []),
            f"parity      ONNX Runtime vs torch on {self.parity.n_images} images: map {self.parity.map_rel_diff:.1e}, "
            f"score {self.parity.max_score_drift:.1e} (relative)",
        ])


def export_model(
    model: nn.Module,
    preset: Preset,
    category: Category,
    out: str | Path,
    thresholds: ThresholdPolicy = ThresholdPolicy(),
    *,
    epochs: int = 0,
    duration_s: float | None = None,
    input_size: InputSizeRecord | None = None,
    progress: bool = True,
) -> ExportResult:
    """Choose the head, fit normal statistics on the holdout, set thresholds, write the bundle, check ORT parity.

    Args:
        model: the trained HaloAE (eval mode).
        preset: the preset it was trained with (its holdout split and score settings are used).
        category: the scanned MVTec-layout folder it was trained on.
        out: bundle folder to write.
        thresholds: target false-reject and pixel false-positive rates on the held-back good images.
        epochs, duration_s, input_size: recorded in the manifest's training section (``input_size``: how ``train``
            chose the input size).
        progress: show progress bars.

    Raises:
        BundleError: ONNX Runtime differs from torch beyond the stated tolerance.
    """
    spec = preset.model
    fit_paths, holdout_paths = holdout_split(category, preset.train)
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=progress, desc="holdout")
    scorer, stats, choice = build_scorer(model, preset, holdout, progress=progress)
    info = TrainingInfo(
        preset=preset.name,
        backbone=spec.backbone,
        attention=spec.attention,
        dataset=category.name,
        data_fingerprint=data_fingerprint(category.train, category.root),
        n_fit=len(fit_paths),
        n_holdout=len(holdout_paths),
        epochs=epochs,
        seed=preset.train.seed,
        duration_s=duration_s,
        input_size=input_size,
    )
    name = f"{category.name}-{Path(preset.name).stem}"
    bundle = export_bundle(scorer, Path(out), name, spec.resize, stats, stats.thresholds(thresholds), info, holdout,
                           head_probe=choice.probe)
    result = ExportResult(bundle, check_parity(scorer, bundle), stats, scorer, choice)
    if result.threshold_warning:
        log.warning("image threshold rests on a small holdout",
                    extra=kv(held_back=stats.image.n, target_false_reject_rate=thresholds.image_false_reject_rate))
    return result


def export(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    score_overrides: Sequence[str] = (),
    thresholds: ThresholdPolicy = ThresholdPolicy(),
    progress: bool = True,
) -> ExportResult:
    """A training checkpoint -> a model bundle.

    Args:
        checkpoint: ``.pt`` written by ``train`` (``<bundle>.work/checkpoints/last.pt``).
        data: the MVTec-layout category folder the model was trained on (for its holdout split).
        out: bundle folder to write.
        score_overrides: ``score.*=value`` settings, e.g. ``score.head=location``: how a trained model is scored
            can change without retraining.
        thresholds: target rates for the thresholds.
        progress: show progress bars.

    Raises:
        ConfigError: an override outside ``score.``.
        DataError: unreadable checkpoint or data folder.
    """
    category = scan_category(data)
    model, preset = load_checkpoint(Path(checkpoint))
    preset = with_score_overrides(preset, list(score_overrides))
    torch.set_num_threads(preset.train.threads or torch.get_num_threads())
    return export_model(model, preset, category, out, thresholds, progress=progress)
