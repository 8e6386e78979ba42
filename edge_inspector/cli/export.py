"""``edge-inspector export``: a training checkpoint -> a model bundle, and the steps ``train`` shares with it.

Normal statistics and thresholds come from the holdout slice of ``<data>/train/good``: the same seeded split the
training used (same preset seed and fraction), so no image that shaped the weights shapes the thresholds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_IMAGE_FRR = 0.01
DEFAULT_PIXEL_FPR = 0.001


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-frr", type=float, default=DEFAULT_IMAGE_FRR,
                        help="false-reject rate the image threshold aims at on held-back good images (default 0.01)")
    parser.add_argument("--pixel-fpr", type=float, default=DEFAULT_PIXEL_FPR,
                        help="share of normal pixels above the defect-region threshold (default 0.001)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) written by 'train'")
    parser.add_argument("--data", required=True, help="the MVTec-layout category folder the model was trained on")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    add_threshold_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="score.key=value",
                        help="scoring overrides, e.g. score.head=location score.aggregation=max")


@dataclass
class ExportSummary:
    bundle: Any
    """edge_inspector.bundle.store.Bundle."""
    parity: Any
    """edge_inspector.engines.parity.ParityReport."""
    stats: Any
    """edge_inspector.training.scoring.NormalStatistics."""
    scorer: Any
    """The torch AnomalyScorer that was exported."""


def holdout_split(category: Any, preset: Any) -> tuple[list[Path], list[Path]]:
    """The (fit, holdout) split of ``category.train`` that ``preset.train`` defines."""
    from edge_inspector.data.folders import split_holdout
    from edge_inspector.errors import DataError

    if preset.train.holdout_fraction <= 0:
        raise DataError("train.holdout_fraction is 0: normal statistics and thresholds need held-back good images")
    return split_holdout(category.train, preset.train.holdout_fraction, preset.train.seed)


def bundle_from_model(
    model: Any,
    preset: Any,
    category: Any,
    out_dir: Path,
    image_frr: float = DEFAULT_IMAGE_FRR,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    epochs: int = 0,
    duration_s: float | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Fit normal statistics on the holdout, set thresholds, export the bundle and check ORT parity."""
    from edge_inspector.bundle.manifest import TrainingInfo
    from edge_inspector.data.folders import data_fingerprint, load_images
    from edge_inspector.export.onnx_export import ThresholdPolicy, export_bundle, thresholds_from_normal
    from edge_inspector.export.parity import check_parity
    from edge_inspector.training.heads import build_scorer

    spec = preset.model
    fit_paths, holdout_paths = holdout_split(category, preset)
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=progress, desc="holdout")
    scorer, stats, choice = build_scorer(model, preset, holdout, progress=progress)
    thresholds = thresholds_from_normal(stats, ThresholdPolicy(image_frr, pixel_fpr))
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
    )
    name = f"{category.name}-{Path(preset.name).stem}"
    bundle = export_bundle(scorer, out_dir, name, spec.resize, stats, thresholds, info, holdout,
                           head_probe=choice.probe)
    parity = check_parity(scorer, bundle)
    return ExportSummary(bundle, parity, stats, scorer)


def print_summary(summary: ExportSummary) -> None:
    m = summary.bundle.manifest
    image, pixel = summary.stats.image, summary.stats.pixel
    print(f"bundle      {summary.bundle.path}  ({m.model_id}, opset {m.graph.opset}, "
          f"input {m.input.width}x{m.input.height} uint8 RGB, {m.input.resize})")
    print(f"holdout     {image.n} good training images kept out of fitting: image score mean {image.mean:.4g} "
          f"std {image.std:.4g} max {image.max:.4g}; pixel p99.9 {pixel.quantiles.get('0.999', float('nan')):.4g}")
    probe = "; ".join(f"{head} {v['image_auroc']:.3f} / {v['pixel_auroc']:.3f}" for head, v in m.score.head_probe.items())
    print(f"head        {m.score.head}" + (f" (chosen on synthetic defects, image / pixel AUROC: {probe})" if probe else ""))
    print(f"thresholds  image {m.thresholds.image:.4g} (target false-reject rate "
          f"{m.thresholds.target_false_reject_rate}), pixel {m.thresholds.pixel:.4g}; score = {m.score.aggregation}")
    parity = summary.parity
    print(f"parity      ONNX Runtime vs torch on {parity.n_images} images: map {parity.map_rel_diff:.1e}, "
          f"score {parity.max_score_drift:.1e} (relative)")


def main(args: argparse.Namespace) -> int:
    import torch

    from edge_inspector.data.folders import scan_category
    from edge_inspector.model.presets import with_score_overrides
    from edge_inspector.training.trainer import load_checkpoint

    category = scan_category(args.data)
    model, preset = load_checkpoint(Path(args.checkpoint))
    preset = with_score_overrides(preset, args.overrides)
    torch.set_num_threads(preset.train.threads or torch.get_num_threads())
    summary = bundle_from_model(model, preset, category, Path(args.out), args.target_frr, args.pixel_fpr,
                                progress=not args.no_progress)
    print_summary(summary)
    return 0
