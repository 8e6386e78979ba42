"""How much faster ONNX Runtime's integer convolutions are than its float ones on this CPU, by conv kind.

Why: the HQS latency ratio (benchmarks/bench_hqs.py) depends on which kernels the backbone spends its time in.
Each case is one conv at a shape from EfficientNet-Lite0 at 256x256 (the haloae-lite backbone), built twice: FP32
and as the QDQ form HQS writes (uint8 activations, per-channel int8 weights with the 8-bit grid HQS uses), which
ONNX Runtime fuses into ``QLinearConv``. Timed with ONNX Runtime's profiler, so only the conv kernel counts (not
the layout reorders a one-node graph needs at its edges); FP32 and INT8 alternate in rounds, medians kept.

    .venv/bin/python benchmarks/bench_int8_kernels.py --threads 1 2

Writes ``benchmarks/results/int8_kernels_<time>.json`` with per-case kernel medians and the int8/fp32 ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.engines.records import new_record, script_command, write_record

ROOT = Path(__file__).resolve().parents[1]

# (name, in channels, out channels, kernel, stride, groups, input side): Lite0 layers at a 256x256 input
CASES = [
    ("stem 3x3 s2, 3->32", 3, 32, 3, 2, 1, 256),
    ("stem as space-to-depth 2x2, 12->32 @128", 12, 32, 2, 1, 1, 128),  # the same stem on a 2x2-blocked input
    ("depthwise 3x3, 32 @128", 32, 32, 3, 1, 32, 128),
    ("depthwise 3x3, 144 @64", 144, 144, 3, 1, 144, 64),
    ("depthwise 5x5, 240 @32", 240, 240, 5, 1, 240, 32),
    ("depthwise 3x3, 672 @16", 672, 672, 3, 1, 672, 16),
    ("pointwise 16->96 @128", 16, 96, 1, 1, 1, 128),
    ("pointwise 144->24 @64", 144, 24, 1, 1, 1, 64),
    ("pointwise 80->480 @16", 80, 480, 1, 1, 1, 16),
    ("pointwise 1152->192 @8", 1152, 192, 1, 1, 1, 8),
]


def conv_graph(c_in: int, c_out: int, k: int, stride: int, groups: int, side: int, quantized: bool):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(c_out, c_in // groups, k, k)).astype(np.float32)
    pad = k // 2
    inits, nodes = [], []
    x, w = "x", "w"
    if quantized:
        w_scale = (np.abs(weight).reshape(c_out, -1).max(1) / 63).astype(np.float32)
        codes = np.round(weight / w_scale.reshape(-1, 1, 1, 1)).astype(np.int8)
        inits += [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(w_scale, "w_s"),
                  numpy_helper.from_array(np.zeros(c_out, np.int8), "w_zp"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "a_s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "a_zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_zp"], ["x_dq"]),
                  helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], axis=0)]
        x, w = "x_dq", "w_dq"
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    nodes.append(helper.make_node("Conv", [x, w], ["y"], group=groups, strides=[stride, stride],
                                  pads=[pad] * 4, name="conv"))
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["y", "a_s", "a_zp"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "a_s", "a_zp"], ["out"])]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["out"]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, c_in, side, side])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def conv_kernel_ms(model, side: int, c_in: int, threads: int, runs: int, profile_dir: str) -> float:
    """Median kernel time of the graph's (QLinear)Conv over ``runs`` runs, from ONNX Runtime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(profile_dir, "conv")
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).normal(size=(1, c_in, side, side)).astype(np.float32)}
    for _ in range(runs + 5):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    durations = [e["dur"] / 1000 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                 and e["args"]["op_name"] in ("Conv", "QLinearConv")]
    return float(np.median(durations[5:]))  # the first runs warm up


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=100, help="profiled runs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ei-int8-kernels-") as tmp:
        for name, c_in, c_out, k, stride, groups, side in CASES:
            graphs = {kind: conv_graph(c_in, c_out, k, stride, groups, side, kind == "int8")
                      for kind in ("fp32", "int8")}
            for threads in args.threads:
                times = {kind: [] for kind in graphs}
                for _ in range(args.rounds):
                    for kind, model in graphs.items():
                        times[kind].append(conv_kernel_ms(model, side, c_in, threads, args.runs, tmp))
                fp32, int8 = (float(np.median(times[kind])) for kind in ("fp32", "int8"))
                row = {"case": name, "threads": threads, "fp32_ms": round(fp32, 4), "int8_ms": round(int8, 4),
                       "int8_over_fp32": round(int8 / fp32, 3)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    doc = new_record(script_command(), "onnxruntime", **{
        "benchmark": "int8_kernels",
        "results": rows,
    })
    write_record(args.out, "int8_kernels", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
