"""``edge-inspector train --data <category> --config haloae-lite --out <bundle> [key=value ...] [--resume]``.

Fits HaloAE on ``train/good`` minus a seeded holdout slice, takes normal statistics and thresholds from that
holdout, exports the bundle (ONNX + manifest + calibration images), checks ONNX Runtime against torch and prints a
summary. Checkpoints go to a work folder beside the bundle (not into it: the bundle is what ships).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_inspector.cli.export import add_threshold_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="MVTec-layout category folder (<cat>/train/good ...)")
    parser.add_argument("--config", default="haloae-lite", help="preset name (haloae-lite, haloae-paper) or YAML path")
    parser.add_argument("--out", required=True, help="model bundle folder to write")
    parser.add_argument("--work-dir", default=None,
                        help="checkpoints and training state (default: <out>.work beside the bundle)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    add_threshold_arguments(parser)
    parser.add_argument("--max-images", type=int, default=None,
                        help="use only the first N training images (sorted names; for quick checks)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="preset overrides, e.g. train.epochs=5 model.attention=block_mean")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.data.folders import Category, load_images, scan_category
    from edge_inspector.errors import ConfigError
    from edge_inspector.cli.export import bundle_from_model, holdout_split, print_summary
    from edge_inspector.model.haloae import build_model
    from edge_inspector.model.presets import load_preset
    from edge_inspector.training.trainer import fit

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}: overrides are key=value, e.g. train.epochs=5")
    preset = load_preset(args.config, args.overrides)
    category = scan_category(args.data)
    if args.max_images:
        category = Category(category.root, category.train[: args.max_images], category.test)
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".work")
    progress = not args.no_progress
    spec = preset.model

    fit_paths, holdout_paths = holdout_split(category, preset)
    print(f"data        {category.root}: {len(fit_paths)} images to fit, {len(holdout_paths)} held back; "
          f"preset {preset.name}, {spec.width}x{spec.height}, attention {spec.attention}")
    images = load_images(fit_paths, spec.width, spec.height, spec.resize, progress=progress, desc="training images")
    model = build_model(spec)
    report = fit(model, images, preset.train, work_dir, resume=args.resume, progress=progress, preset=preset)
    resumed = f" (resumed at epoch {report.resumed_from_epoch})" if report.resumed_from_epoch else ""
    losses = " ".join(f"{k} {v:.4f}" for k, v in report.losses.items())
    print(f"trained     {report.epochs_run} of {report.epochs_total} epochs{resumed}, {report.steps} steps in "
          f"{report.duration_s:.0f} s; last epoch {losses}; checkpoint {report.checkpoint}")
    summary = bundle_from_model(model, preset, category, out, args.target_frr, args.pixel_fpr,
                                epochs=report.epochs_total, duration_s=report.duration_s, progress=progress)
    print_summary(summary)
    return 0
