"""Speed of the HaloAE model in torch on this CPU: one training step and one inference, at 1 and 2 threads.

A training step is what ``fit`` does per step: ``batch_size`` originals + their CutPaste-normal and CutPaste-scar
copies through the frozen backbone and the encoder, the decoder and image head on the originals, loss, backward,
Adam. Inference is ``anomaly_map`` on one uint8 image. FLOPs are counted too (they do not depend on how busy the
machine is), and the load average is recorded because a shared machine inflates every wall-clock figure.

    .venv/bin/python benchmarks/bench_model_speed.py                       # haloae-lite at its own size
    .venv/bin/python benchmarks/bench_model_speed.py --preset haloae-lite model.attention=block_mean

Writes benchmarks/results/model_speed_<preset>_<stamp>.json (timings in ms: n, mean, p50, p99, min, max; older
files give median_ms, min_ms, max_ms, runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_inspector.data.augment import cutpaste_batch
from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.engines.latency import interleaved_latency
from edge_inspector.engines.records import new_record, script_command, write_record
from edge_inspector.training.losses import haloae_loss, loss_weights
from edge_inspector.training.trainer import trainable_parameters

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, warmup: int, runs: int) -> dict[str, float]:
    """``fn``'s wall time in ms (n, mean, p50, p99, min, max) over ``runs`` runs after ``warmup``."""
    stats = interleaved_latency({"run": fn}, runs, warmup).stats("run")
    return {key: round(value, 1) for key, value in stats.to_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="haloae-lite")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value preset overrides")
    args = parser.parse_args()
    preset = load_preset(args.preset, args.overrides)
    spec = preset.model
    torch.manual_seed(0)
    model = build_model(spec, pretrained=spec.backbone == "efficientnet_lite0")
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (preset.train.batch_size, spec.height, spec.width, 3), dtype=np.uint8)
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=preset.train.lr)
    weights = loss_weights(0.5, preset.train.loss)

    def train_step() -> None:
        batch, labels = cutpaste_batch(originals, rng)
        x = model.normalize(torch.from_numpy(batch))
        out = model(x, n_decode=len(originals))
        loss, _ = haloae_loss(out, x, torch.from_numpy(labels), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one = torch.from_numpy(originals[:1])

    def infer() -> None:
        with torch.no_grad():
            model.anomaly_map(one)

    model.train()
    with FlopCounterMode(display=False) as step_flops:
        train_step()
    model.eval()
    with FlopCounterMode(display=False) as infer_flops:
        infer()

    timings = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model.train()
        step = timed(train_step, 1, args.runs)
        model.eval()
        inference = timed(infer, 2, args.runs * 2)
        timings[f"threads_{threads}"] = {"train_step": step, "inference": inference}

    doc = new_record(script_command(), "torch", **{
        "benchmark": "model_speed",
        "model": args.preset,
        "overrides": args.overrides,
        "input": [spec.height, spec.width],
        "train_images_per_step": 3 * preset.train.batch_size,
        "train_step_gflop": round(step_flops.get_total_flops() / 1e9, 2),
        "inference_gflop": round(infer_flops.get_total_flops() / 1e9, 3),
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(model)),
        **timings,
    })
    print(json.dumps(doc, indent=2))
    write_record(RESULTS, f"model_speed_{args.preset}", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
