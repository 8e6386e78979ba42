"""``edge-inspector calibrate``: HQS per-layer INT8/INT4 calibration + QAT of a trained HaloAE into a QDQ bundle.

    edge-inspector calibrate --model runs/tile --data datasets/magnetic_tile --out runs/tile-hqs --budget-bits 5

``--model`` is a training checkpoint (``.pt``) or a bundle written by ``train`` (its checkpoint is found in the
``<bundle>.work/checkpoints/last.pt`` folder ``train`` keeps beside it; a bundle holds only ONNX, which cannot be
fine-tuned). Prints progress, then a per-layer table (score, bits, size) and the whole-model figures (size, AUROC
change on the probe set, ONNX Runtime speed change).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="training checkpoint (.pt) or a bundle folder written by 'train'")
    parser.add_argument("--data", required=True, help="the MVTec-layout category folder the model was trained on")
    parser.add_argument("--out", required=True, help="QDQ bundle folder to write")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-bits", type=float, default=None, help="average weight bits over all units (default 5.0)")
    budget.add_argument("--budget-bytes", type=int, default=None, help="total weight bytes of all units")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                        help="store 4-bit weights as true INT4 (default; engines widen them to INT8 on load, so "
                             "they run as fast); --no-small stores INT8 containers")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="allowed probe-set AUROC drop in points before repair promotes units (default 1.0)")
    parser.add_argument("--qat-steps", type=int, default=100, help="quantization-aware fine-tuning steps (0 = PTQ only)")
    parser.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate (default 1e-5)")
    parser.add_argument("--probe-images", type=int, default=16,
                        help="held-back good images and as many synthetic defects HQS measures units on (default 16)")
    parser.add_argument("--calibration-images", type=int, default=32, help="images for activation ranges (default 32)")
    parser.add_argument("--observer", choices=("minmax", "percentile"), default="percentile",
                        help="activation range observer (default percentile 99.99)")
    parser.add_argument("--hessian-samples", type=int, default=4, help="Hutchinson samples (0 skips the HAWQ term)")
    parser.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="engine the bundle is for: onnxruntime (default; unsigned 8-bit grids after ReLUs, "
                             "fast on CPU) or tensorrt (signed grids only, which TensorRT runs exactly as calibrated)")
    parser.add_argument("--plan-dir", default=None,
                        help="also write the plan YAML + markdown here (e.g. the repository's calibration/)")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resolve_checkpoint(model: str) -> Path:
    """The checkpoint behind ``--model``: the file itself, or the one ``train`` keeps beside a bundle."""
    from edge_inspector.errors import BundleError

    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path.with_name(path.name + ".work") / "checkpoints" / "last.pt"
        if candidate.is_file():
            return candidate
        raise BundleError(
            f"{path} is a bundle folder without a training checkpoint beside it ({candidate} is missing); "
            "calibration fine-tunes the torch model, so pass the .pt checkpoint with --model"
        )
    raise BundleError(f"--model {path}: no such checkpoint file or bundle folder")


def _clip_left(text: str, width: int) -> str:
    """``text`` in ``width`` characters, its start replaced by '…' when too long (unit names differ at the end)."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def print_report(rows: list[dict], summary: dict) -> None:
    """The per-layer table (score, bits, size) and the whole-model summary, as plain text."""
    print(f"{'#':>3} {'unit':<44} {'kind':<9} {'params':>8} {'score4':>7} {'score8':>7} {'bits':>4} {'KiB':>7}")
    for i, row in enumerate(rows):
        score = (row["signals"] or {}).get("score", {})
        pin = f"  [{row['pinned']}]" if row["pinned"] else ""
        print(f"{i:>3} {_clip_left(row['unit'], 44):<44} {row['kind']:<9} {row['params']:>8} {score.get('w4a8', 0):>7.3f} "
              f"{score.get('w8a8', 0):>7.3f} {row['weight_bits']:>4} {row['weight_bytes'] / 1024:>7.1f}{pin}")
    print()
    for key in ("average_weight_bits", "precisions", "graph_bytes_fp32", "graph_bytes_hqs", "size_ratio",
                "probe_image_auroc_fp32", "probe_image_auroc_hqs", "probe_pixel_auroc_fp32", "probe_pixel_auroc_hqs",
                "latency_p50_ms_fp32", "latency_p50_ms_hqs", "speed_ratio", "parity", "target",
                "repair_within_tolerance", "final_probe_drop", "final_within_tolerance"):
        if key in summary:
            print(f"{key:<26} {summary[key]}")


def main(args: argparse.Namespace) -> int:
    import tempfile

    import onnx
    import torch

    from edge_inspector.data.folders import load_images, scan_category
    from edge_inspector.cli.export import holdout_split
    from edge_inspector.export.onnx_export import ThresholdPolicy, export_bundle, thresholds_from_normal
    from edge_inspector.bundle.graph_size import initializer_bytes
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.latency import time_graphs
    from edge_inspector.export.qdq import dedupe_initializers, narrow_index_initializers
    from edge_inspector.quantization.calibrate import (
        CalibrateOptions,
        export_qdq_bundle,
        finish_plan_files,
        parity,
        run_hqs,
        summary_of,
    )
    from edge_inspector.data.synthetic import make_probe_set
    from edge_inspector.quantization.qat import QatOptions
    from edge_inspector.quantization.units import set_mode
    from edge_inspector.training.heads import build_scorer
    from edge_inspector.training.scoring import fit_normal_statistics
    from edge_inspector.training.trainer import load_checkpoint

    budget_bits = args.budget_bits if args.budget_bits is not None or args.budget_bytes is not None else 5.0
    options = CalibrateOptions(
        budget_bits=budget_bits, budget_bytes=args.budget_bytes, tolerance=args.tolerance,
        n_calibration=args.calibration_images, n_probe_normal=args.probe_images, n_probe_defects=args.probe_images,
        observer=args.observer, hessian_samples=args.hessian_samples,
        qat=QatOptions(steps=args.qat_steps, lr=args.qat_lr), small=args.small, target=args.target,
        threads=args.threads or torch.get_num_threads(), progress=not args.no_progress,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.model)
    model, preset = load_checkpoint(checkpoint)
    category = scan_category(args.data)
    spec = preset.model
    fit_paths, holdout_paths = holdout_split(category, preset)
    fit_images = load_images(fit_paths, spec.width, spec.height, spec.resize, progress=options.progress, desc="fit")
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=options.progress, desc="holdout")
    print(f"model       {checkpoint} ({preset.name}); data {category.root}: {len(fit_paths)} fit, "
          f"{len(holdout_paths)} held back")

    # the head the FP32 bundle would ship, with its FP32 normal statistics: the signals' reference
    scorer, _, choice = build_scorer(model, preset, holdout, progress=options.progress)
    probe = make_probe_set(holdout, options.n_probe_normal, options.n_probe_defects, options.seed)
    result = run_hqs(scorer, preset, fit_images, probe, options)

    stats = fit_normal_statistics(scorer, holdout, progress=options.progress)  # the quantized model's normal map
    thresholds = thresholds_from_normal(stats, ThresholdPolicy())
    name = f"{category.name}-{Path(preset.name).stem}-hqs"
    with tempfile.TemporaryDirectory(prefix="ei-calibrate-") as tmp:
        set_mode(scorer, "float")
        fp32_bundle = export_bundle(scorer, Path(tmp) / "fp32", name, spec.resize, stats, thresholds, None, holdout,
                                    head_probe=choice.probe)
        fp32_graph = onnx.load(str(fp32_bundle.onnx_path))
        dedupe_initializers(fp32_graph)  # the same lossless clean-ups the QDQ graph gets, for a fair size ratio
        narrow_index_initializers(fp32_graph)
        bundle, graph = export_qdq_bundle(scorer, fp32_bundle, Path(args.out), result, options, name, stats,
                                          thresholds, holdout)
    check = parity(scorer, graph, holdout[:4], options.threads)
    summary = summary_of(result, options)
    latency = time_graphs({"fp32": fp32_graph, "hqs": graph}, holdout[0], options.latency_runs,
                          EngineSettings(intra_op_threads=options.threads))
    fp32_ms, hqs_ms = latency.p50_ms("fp32"), latency.p50_ms("hqs")
    summary.update({
        "graph_bytes_fp32": initializer_bytes(fp32_graph),
        "graph_bytes_hqs": initializer_bytes(graph),
        "size_ratio": round(initializer_bytes(graph) / initializer_bytes(fp32_graph), 4),
        "latency_p50_ms_fp32": round(fp32_ms, 2),
        "latency_p50_ms_hqs": round(hqs_ms, 2),
        "speed_ratio": round(latency.ratio("hqs"), 3),
        "parity": {k: float(f"{v:.3g}") for k, v in check.items()},
        "target": options.target,
        "bundle": str(bundle.path),
    })
    folders = [Path(args.out) / "calibration"] + ([Path(args.plan_dir)] if args.plan_dir else [])
    paths = finish_plan_files(result, summary, folders, name)
    print_report(result.rows, summary)
    print(f"bundle      {bundle.path} ({bundle.manifest.model_id}); plan {', '.join(str(p) for p in paths)}")
    return 0
