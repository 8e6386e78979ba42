"""``edge-inspector calibrate``: HQS per-layer INT8/INT4 calibration + QAT of a trained HaloAE into a QDQ bundle.

    edge-inspector calibrate --model runs/tile --data datasets/magnetic_tile --out runs/tile-hqs --budget-bits 5

A thin shell over ``edge_inspector.workflows.calibrate.calibrate``. ``--model`` is a training checkpoint (``.pt``)
or a bundle written by ``train`` (its checkpoint is the ``<bundle>.work/checkpoints/last.pt`` ``train`` keeps beside
it; a bundle holds only ONNX, which cannot be fine-tuned); given a bundle, the QDQ bundle's thresholds keep its
target rates. Prints progress, then a per-layer table (score, bits, size) and the whole-model figures (size, AUROC
change on the probe set with its interval, ONNX Runtime speed change). Exits 1 when the shipped model's probe drop
exceeds --tolerance (the bundle is still written, for inspection), unless --accept-drop.
"""

from __future__ import annotations

import argparse
import sys

from edge_inspector.cli.arguments import add_threshold_arguments, threshold_policy
from edge_inspector.errors import AccuracyCheckError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="training checkpoint (.pt) or a bundle folder written by 'train'")
    parser.add_argument("--data", required=True, help="the MVTec-layout category folder the model was trained on")
    parser.add_argument("--out", required=True, help="QDQ bundle folder to write")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-bits", type=float, default=None,
                        help="average weight bits over all units (default 5.0; 8.0 with --target tensorrt)")
    budget.add_argument("--budget-bytes", type=int, default=None, help="total weight bytes of all units")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                        help="store 4-bit weights as true INT4 (default; engines widen them to INT8 on load, so "
                             "they run as fast); --no-small stores INT8 containers")
    parser.add_argument("--allocation", choices=("knapsack", "raad"), default="knapsack",
                        help="bit allocation: the exact knapsack (default) or RAAD's step function on sorted scores")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="allowed probe-set AUROC drop in points, for repair and the final check (default 1.0)")
    parser.add_argument("--accept-drop", action="store_true",
                        help="exit 0 even when the shipped model's probe drop exceeds --tolerance (default: exit 1)")
    parser.add_argument("--rounding", choices=("adaround", "nearest"), default="adaround",
                        help="rounding of the 4-bit weights: learned per weight (AdaRound, default) or to nearest")
    parser.add_argument("--qat-steps", type=int, default=100, help="quantization-aware fine-tuning steps (0 = PTQ only)")
    parser.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate (default 1e-5)")
    parser.add_argument("--probe-normals", type=int, default=None,
                        help="held-back good images in the probe HQS measures units on (default: all)")
    parser.add_argument("--defects-per-good", type=int, default=3,
                        help="synthetic defects made from each probe image (default 3: CutPaste, scar, Perlin)")
    parser.add_argument("--calibration-images", type=int, default=32, help="images for activation ranges (default 32)")
    parser.add_argument("--observer", choices=("minmax", "percentile"), default="percentile",
                        help="activation range observer (default percentile 99.99)")
    parser.add_argument("--hessian-samples", type=int, default=4, help="Hutchinson samples (0 skips the HAWQ term)")
    parser.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="engine the bundle is for: onnxruntime (default; unsigned 8-bit grids after ReLUs, "
                             "fast on CPU) or tensorrt (signed grids only, which TensorRT runs exactly as calibrated; "
                             "each unit INT8 or FP16, no INT4 convolution on TensorRT)")
    parser.add_argument("--weight-range", choices=("auto", "full", "reduced"), default="auto",
                        help="8-bit weight codes: full -127..127, reduced -63..63, or auto (default): full for "
                             "TensorRT and for a CPU with VNNI, reduced where ONNX Runtime's kernels saturate")
    parser.add_argument("--plan-dir", default=None,
                        help="also write the plan YAML + markdown here (e.g. the repository's calibration/)")
    add_threshold_arguments(parser, inherit="the FP32 bundle's when --model is a bundle")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    import torch

    from edge_inspector.quantization.calibrate import CalibrateOptions
    from edge_inspector.quantization.qat import QatOptions
    from edge_inspector.workflows.calibrate import calibrate

    options = CalibrateOptions(
        budget_bits=args.budget_bits, budget_bytes=args.budget_bytes, allocation=args.allocation,
        tolerance=args.tolerance, accept_drop=args.accept_drop, n_calibration=args.calibration_images,
        probe_normals=args.probe_normals, defects_per_good=args.defects_per_good, observer=args.observer,
        hessian_samples=args.hessian_samples, rounding=args.rounding,
        qat=QatOptions(steps=args.qat_steps, lr=args.qat_lr), small=args.small, target=args.target,
        weight_range=args.weight_range, threads=args.threads or torch.get_num_threads(),
        progress=not args.no_progress,
    )
    try:
        result = calibrate(args.model, args.data, args.out, options, thresholds=threshold_policy(args),
                           plan_dir=args.plan_dir)
    except AccuracyCheckError as failed:  # the bundle was written: show what it is, then fail
        print(failed.result.summary())
        print(f"error: {failed}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
