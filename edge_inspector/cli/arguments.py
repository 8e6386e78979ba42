"""Argument groups that several commands share (not a command itself)."""

from __future__ import annotations

import argparse

from edge_inspector.bundle.thresholds import ThresholdPolicy

DEFAULT_POLICY = ThresholdPolicy()


def add_threshold_arguments(parser: argparse.ArgumentParser, inherit: str | None = None) -> None:
    """``--target-frr`` and ``--pixel-fpr``: the target rates of thresholds set from held-back good images.

    Args:
        inherit: where the rates come from when neither flag is given (e.g. "the FP32 bundle's manifest"); None:
            the defaults.
    """
    default = f"default: {inherit}, else " if inherit else "default "
    parser.add_argument("--target-frr", type=float, default=None,
                        help="false-reject rate the image threshold aims at on held-back good images "
                             f"({default}{DEFAULT_POLICY.image_false_reject_rate})")
    parser.add_argument("--pixel-fpr", type=float, default=None,
                        help="share of normal pixels above the defect-region threshold "
                             f"({default}{DEFAULT_POLICY.pixel_false_positive_rate})")


def threshold_policy(args: argparse.Namespace) -> ThresholdPolicy | None:
    """The policy the threshold flags ask for; None when neither was given."""
    if args.target_frr is None and args.pixel_fpr is None:
        return None
    return ThresholdPolicy(
        DEFAULT_POLICY.image_false_reject_rate if args.target_frr is None else args.target_frr,
        DEFAULT_POLICY.pixel_false_positive_rate if args.pixel_fpr is None else args.pixel_fpr,
    )
