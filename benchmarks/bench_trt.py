"""TensorRT path benchmark (issue 5): FP16 graph preparation drift everywhere; build, parity and latency on a GPU.

On any machine: prepare the bundle graph for a strongly typed build (FP16 float parts, Q/DQ kept, pins FP32) and
run it in ONNX Runtime (CPU) against the original on the bundle's calibration images: the FP16 part of the error a
TensorRT plan will show. Where tensorrt, pycuda and an NVIDIA GPU exist, also build the plan, check its parity
against ONNX Runtime and time both engines interleaved (p50/p99, one image per call, host copies included).

    .venv/bin/python benchmarks/bench_trt.py --model path/to/bundle
    .venv/bin/python benchmarks/bench_trt.py            # no bundle: exports an *untrained* haloae-lite (real Lite0
                                                        # weights) on magnetic_tile good images (needs torch)
    .venv/bin/python benchmarks/bench_trt.py --qdq      # the same, quantized uniformly W8A8 (HQS export, opset 21);
                                                        # needs OrtEngine to load QDQ graphs with the session config
                                                        # their metadata names (engines.ort.load_session)

Writes benchmarks/results/trt_<model_id>_<stamp>.json (command, date, machine, preparation report, fp16 parity,
and, on a GPU, build timings, plan parity and latencies).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edge_inspector.engines.records import new_record, script_command, write_record

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "work"
DATASET = Path("/work/shared/datasets/magnetic_tile")


def untrained_lite_bundle(out: Path, n_images: int, qdq: bool):
    """haloae-lite with its real ImageNet backbone and an untrained auto-encoder, exported on real tile images;
    with ``qdq`` every auto-encoder conv is quantized W8A8 (calibrated on the same images) before export."""
    import cv2
    import numpy as np
    import onnx
    import torch

    from edge_inspector.bundle.manifest import QuantizationSpec
    from edge_inspector.bundle.store import load_bundle, write_bundle
    from edge_inspector.bundle.thresholds import ThresholdPolicy
    from edge_inspector.export.onnx_export import export_bundle
    from edge_inspector.export.qdq import insert_qdq
    from edge_inspector.model.haloae import build_model
    from edge_inspector.model.presets import load_preset
    from edge_inspector.preprocess import to_model_input
    from edge_inspector.model.batchnorm import fold_batchnorm
    from edge_inspector.quantization import units as qu
    from edge_inspector.quantization.qdq_bundle import conv_quant_from_module
    from edge_inspector.model.normal_stats import fit_normal_statistics
    from edge_inspector.model.scorer import make_scorer

    torch.manual_seed(0)
    preset = load_preset("haloae-lite")
    scorer = make_scorer(build_model(preset.model).eval(), preset).eval()
    files = sorted((DATASET / "train" / "good").glob("*"))[:n_images]
    images = np.stack([to_model_input(cv2.imread(str(f)), preset.model.width, preset.model.height)[0] for f in files])
    if qdq:
        units = qu.discover_units(scorer, skip=("model.backbone", "model.image_head"))
        fold_batchnorm(scorer, torch.from_numpy(images[:1]))
        qu.wrap_units(scorer, units)
        qu.set_mode(scorer, "calibrate")
        with torch.no_grad():
            scorer(torch.from_numpy(images))
        qu.set_mode(scorer, "float")
    stats = fit_normal_statistics(scorer, images)
    thresholds = stats.thresholds(ThresholdPolicy(0.01, 0.001))
    name = f"magnetic_tile-haloae-lite-untrained{'-w8a8' if qdq else ''}"
    bundle = export_bundle(scorer, out, name, "stretch", stats, thresholds, None, images)
    if not qdq:
        return bundle
    qu.set_mode(scorer, "quant")
    qu.apply_plan(scorer, units, {u.name: "w8a8" for u in units})
    convs = {n: conv_quant_from_module(m) for n, m in qu.quant_modules(scorer).items()}
    qdq_path = out / "model.qdq.onnx"
    onnx.save(insert_qdq(onnx.load(str(bundle.onnx_path)), convs), qdq_path)
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.quantization = QuantizationSpec(precision="qdq", bit_plan={u.name: "w8a8" for u in units})
    written = write_bundle(out, qdq_path, manifest, images)
    qdq_path.unlink()
    return load_bundle(written.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="bundle folder (default: export an untrained haloae-lite)")
    parser.add_argument("--images", type=int, default=8, help="calibration images for the exported bundle")
    parser.add_argument("--qdq", action="store_true", help="quantize the exported model W8A8 (no --model)")
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()

    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines.fp16_check import verify_prepared
    from edge_inspector.engines.trt_prep import prepare_bundle_graph
    from edge_inspector.engines.trt_run import probe_device

    WORK.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.model) if args.model else untrained_lite_bundle(
        Path(tempfile.mkdtemp(dir=WORK, prefix="trt-bundle-")), args.images, args.qdq
    )
    device = probe_device()
    result = new_record(script_command(), "onnxruntime", model_id=bundle.manifest.model_id, bundle=str(bundle.path))
    result["machine"].update(gpu=device.gpu_name or "none", compute_capability=device.compute_capability or "",
                             tensorrt=device.tensorrt_version or "none")
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        prepared = Path(scratch) / "model.fp16.onnx"
        start = time.perf_counter()
        result["preparation"] = prepare_bundle_graph(bundle, prepared).to_dict()
        result["prepare_s"] = round(time.perf_counter() - start, 3)
        fp16 = verify_prepared(bundle, prepared, max_images=args.images)
        result["fp16_in_onnxruntime"] = fp16.to_dict()
        print(fp16.summary())

    reason = device.unavailable_reason()
    if reason:
        result["tensorrt"] = {"skipped": reason}
        print(f"TensorRT part skipped: {reason}")
    else:
        from edge_inspector.engines.plan_check import check_plan
        from edge_inspector.engines.trt_build import BuildOptions, build_engine

        built = build_engine(bundle, BuildOptions(out=WORK / f"{bundle.manifest.model_id}.plan"))
        check = check_plan(bundle, built.plan_path, args.latency_runs)
        print(check.summary())
        result["tensorrt"] = {"plan": str(built.plan_path), "build_timings_s": built.sidecar.build_timings_s,
                              "parity": check.parity.to_dict(), **check.latency_record()}

    write_record(RESULTS, f"trt_{bundle.manifest.model_id}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
