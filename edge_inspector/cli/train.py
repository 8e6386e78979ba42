"""``edge-inspector train --data <category> --config haloae-lite --out <bundle> [key=value ...] [--resume]``.

A thin shell over ``edge_inspector.workflows.train.train``: fits HaloAE on ``train/good`` minus a seeded holdout
slice, exports the FP32 bundle with thresholds from that holdout, checks ONNX Runtime against torch, prints a summary.
Before training it prints the input size: chosen from the training images' sizes unless ``model.width`` /
``model.height`` are set (README, "Input size").
"""

from __future__ import annotations

import argparse

from edge_inspector.cli.arguments import DEFAULT_POLICY, add_threshold_arguments, threshold_policy


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
    parser.add_argument("--group-by", metavar="REGEX", default=None,
                        help="hold back whole parts: a regular expression whose first capture group, searched in "
                             "each file name, names the part (e.g. 'part(\\d+)_'); stored as train.group_by")
    parser.add_argument("--group-gap", type=int, metavar="N", default=None,
                        help="with --group-by capturing a frame number: numbers within N of the previous one "
                             "belong to the same part (magnetic_tile: --group-by 'num_(\\d+)' --group-gap 150)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="preset overrides, e.g. train.epochs=5 model.attention=block_mean; model.width and "
                             "model.height fix the input size (default: from the training images' sizes)")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.workflows.train import train

    result = train(args.data, args.out, args.config, args.overrides, work_dir=args.work_dir, resume=args.resume,
                   thresholds=threshold_policy(args) or DEFAULT_POLICY, max_images=args.max_images,
                   group_by=args.group_by, group_gap=args.group_gap,
                   progress=not args.no_progress, announce=print)
    print(result.summary())
    return 0
