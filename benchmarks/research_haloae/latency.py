"""Where the fused graph's time goes, and what the auto-encoder variants cost in ONNX Runtime (issue 13 research).

Exports, with untrained weights (latency does not depend on them): the package's location-only graph, its fused
graph (backbone + location head + today's auto-encoder), and each research auto-encoder variant on its own (input:
the 176-channel 32x32 feature grid). Times them interleaved (one run of each per cycle) and, with ``--profile``,
breaks the fused graph down by ONNX operator type with ONNX Runtime's profiler.

    nice -n 10 .venv/bin/python benchmarks/research_haloae/latency.py --threads 2 --cycles 100 --profile
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edge_inspector.export.onnx_export import export_onnx
from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.quantization.calibrate import interleaved_latency
from edge_inspector.model.scorer import make_scorer

from aemodel import ResearchAE

VARIANTS = {
    "ae_base": {},
    "ae_d2_4blk": {"down": 2},
    "ae_d2_2blk": {"down": 2, "widths": [64, 48, 24], "heads": [2, 2], "kernels": [3, 3]},
    "ae_base_conv": {"attention": "none"},
}


def export_module(module: torch.nn.Module, example: torch.Tensor, path: Path) -> onnx.ModelProto:
    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)["local"]

    with torch.no_grad():
        torch.onnx.export(Wrap(module.eval()), (example,), str(path), opset_version=21, dynamo=True,
                          external_data=False, verbose=False)
    return onnx.load(str(path))


def package_graph(head: str, tmp: Path, overrides: list[str] = ()) -> onnx.ModelProto:
    preset = load_preset("haloae-lite", [f"score.head={head}", *overrides])
    model = build_model(preset.model).eval()
    scorer = make_scorer(model, preset)
    return onnx.load(str(export_onnx(scorer, tmp / f"{head}.onnx")))


def profile(graph: onnx.ModelProto, feed: np.ndarray, threads: int, runs: int, tmp: Path) -> dict[str, float]:
    """Mean ms per run by ONNX operator type (ORT profiler, after warm-up)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / "prof")
    session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: feed})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        graphs = {"location": package_graph("location", tmp), "fused": package_graph("fused", tmp)}
        timing = interleaved_latency(graphs, image, args.cycles, args.threads)
        print({n: (round(timing.p50_ms(n), 2), round(timing.ratio(n), 2)) for n in graphs})
        grid = torch.randn(1, 176, 32, 32)
        ae_graphs = {n: export_module(ResearchAE(176, (32, 32), c), grid, tmp / f"{n}.onnx") for n, c in VARIANTS.items()}
        feed = grid.numpy()
        ae_timing = interleaved_latency(ae_graphs, feed[0], args.cycles, args.threads)
        print({n: (round(ae_timing.p50_ms(n), 2), round(ae_timing.ratio(n), 2)) for n in ae_graphs})
        if args.profile:
            for name in ("location", "fused"):
                print(name, {k: round(v, 3) for k, v in profile(graphs[name], image[None], args.threads, 30, tmp).items()})
            for name in ("ae_base", "ae_d2_4blk"):
                print(name, {k: round(v, 3) for k, v in profile(ae_graphs[name], feed, args.threads, 30, tmp).items()})


if __name__ == "__main__":
    main()
