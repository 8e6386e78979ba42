"""``edge-inspector build-engine``: build a TensorRT plan for this GPU, check it against ONNX Runtime, time it.

    edge-inspector build-engine --model models/magnetic_tile [--workspace-mb 1024] [--timing-cache FILE]
                                [--batch 1] [--out FILE] [--skip-parity] [--latency-runs 200]
    edge-inspector build-engine --check [--model models/magnetic_tile]

``--check`` builds nothing: it reports GPU, driver, CUDA, TensorRT and pycuda versions and whether the bundle's plans
fit this device (exit 0 when the TensorRT path is usable here, 1 when not).

Run it on the device that will run the plan (a Jetson or the line PC's GPU). The build fails (exit 1, plan removed)
when the plan's scores drift from ONNX Runtime's beyond the manifest's ``parity`` tolerances on the bundle's
calibration images.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model bundle folder (holds manifest.yaml and the ONNX graph)")
    parser.add_argument("--check", action="store_true",
                        help="build nothing: report GPU, driver, CUDA, TensorRT, pycuda and whether the plans fit")
    parser.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT workspace limit in MiB (default 1024)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="persistent timing cache file (default: next to the plan in <bundle>/plans/)")
    parser.add_argument("--batch", type=int, default=1,
                        help="largest batch the plan accepts (default 1; > 1 needs a dynamic-batch graph); "
                             "tactics are tuned for batch 1, the batch the line runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="plan file (default <bundle>/plans/<gpu>-trt<version>.plan)")
    parser.add_argument("--skip-parity", action="store_true",
                        help="keep the plan without checking it against ONNX Runtime (not for production)")
    parser.add_argument("--latency-runs", type=int, default=200, help="timed cycles for the latency summary (each runs the plan and ONNX Runtime once)")


def print_gpu_report(model: str | None) -> int:
    """Print the GPU report; 0 when the TensorRT path (and every plan of ``model``) is usable here."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines.gpu_report import gpu_report

    report = gpu_report(load_bundle(model) if model else None)
    print("\n".join(report.lines()))
    print("TensorRT path: " + ("usable" if report.usable else "NOT usable here (see 'fail' above)"))
    return 0 if report.usable else 1


def main(args: argparse.Namespace) -> int:
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines import trt_layers
    from edge_inspector.engines.trt_build import BuildOptions, build_engine
    from edge_inspector.errors import ConfigError

    if args.check:
        return print_gpu_report(args.model)
    if not args.model:
        raise ConfigError("build-engine needs --model <bundle folder> (or --check to only inspect this machine)")
    bundle = load_bundle(args.model)
    options = BuildOptions(
        workspace_mb=args.workspace_mb, batch=args.batch, timing_cache=args.timing_cache, out=args.out,
    )
    result = build_engine(bundle, options)
    sidecar = result.sidecar
    print(f"plan      {result.plan_path}")
    board = f", {sidecar.module_model}" if sidecar.module_model else ""
    print(f"built on  {sidecar.gpu_name} (sm {sidecar.compute_capability}, {sidecar.sm_count} SMs, "
          f"{sidecar.total_memory_mb} MiB{board}), TensorRT {sidecar.tensorrt_version}")
    print("timings   " + "  ".join(f"{k} {v:.2f}" for k, v in sidecar.build_timings_s.items()))
    prep = result.preparation
    print(f"graph     {prep.qdq_nodes} Q/DQ nodes, FP32 pins: {', '.join(prep.fp32_nodes) or 'none'}")
    print(f"engine    {trt_layers.summary_line(sidecar.precision_summary)}")
    for warning in result.warnings:
        print(f"warning   {warning}")
    if result.fp16_check:
        print(f"fp16      max score drift in ONNX Runtime {result.fp16_check['max_score_drift']:.2e}")
    if args.skip_parity:
        print("parity    skipped (--skip-parity): this plan was not checked against ONNX Runtime")
        return 0

    from edge_inspector.engines.plan_check import check_plan, keep_or_remove

    check = check_plan(bundle, result.plan_path, args.latency_runs)
    print(check.summary())
    if not keep_or_remove(result.plan_path, check):
        print(f"build failed: plan removed so the line cannot pick it up ({result.plan_path.name})")
        return 1
    return 0
