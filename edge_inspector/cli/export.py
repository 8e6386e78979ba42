"""``edge-inspector export --checkpoint <.pt> --data <category> --out <bundle> [score.key=value ...]``.

A thin shell over ``edge_inspector.workflows.export.export``: a training checkpoint -> a model bundle, normal
statistics and thresholds from the same holdout slice the training used; ``score.*`` overrides change how the
model is scored (e.g. ``score.head=location``) without retraining.
"""

from __future__ import annotations

import argparse

from edge_inspector.cli.arguments import DEFAULT_POLICY, add_threshold_arguments, threshold_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) written by 'train'")
    parser.add_argument("--data", required=True, help="the MVTec-layout category folder the model was trained on")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    add_threshold_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="score.key=value",
                        help="scoring overrides, e.g. score.head=location score.aggregation=max")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.workflows.export import export

    result = export(args.checkpoint, args.data, args.out, score_overrides=args.overrides,
                    thresholds=threshold_policy(args) or DEFAULT_POLICY, progress=not args.no_progress)
    print(result.summary())
    return 0
