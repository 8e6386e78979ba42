"""``edge-inspector eval --model <bundle dir or checkpoint> --data <category> [--out dir]``.

A thin shell over ``edge_inspector.workflows.evaluate.evaluate``: a bundle runs through ONNX Runtime (the graph
that ships), a training checkpoint in torch with thresholds rebuilt from the training holdout; prints the metrics
table and writes result.json, table.txt and overlays.
"""

from __future__ import annotations

import argparse

from edge_inspector.cli.arguments import DEFAULT_POLICY, add_threshold_arguments, threshold_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model bundle folder, or a training checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="MVTec-layout category folder with test/ (and ground_truth/ for pixel figures)")
    parser.add_argument("--out", default=None, help="result folder (default: runs/eval/<model>-<category>)")
    parser.add_argument("--engine", choices=["onnxruntime", "torch"], default=None,
                        help="default: onnxruntime for a bundle, torch for a checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = every core)")
    parser.add_argument("--overlays", type=int, default=8, help="number of overlay images to write")
    add_threshold_arguments(parser)  # for a checkpoint; a bundle brings its own thresholds
    parser.add_argument("--write-thresholds", action="store_true",
                        help="store the F1-optimal image and pixel thresholds on this labelled set in the bundle "
                             "(use a labelled calibration set, not the set you report on)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.workflows.evaluate import evaluate

    result = evaluate(args.model, args.data, args.out, engine=args.engine, threads=args.threads,
                      overlays=args.overlays, thresholds=threshold_policy(args) or DEFAULT_POLICY,
                      write_thresholds=args.write_thresholds, progress=not args.no_progress)
    print(result.summary())
    return 0
