"""HQS against its controls in one run, on the test split, through ONNX Runtime (CPU): accuracy with bootstrap
intervals, interleaved latency at 1 and 2 threads, file bytes and run-time weight bytes.

    .venv/bin/python benchmarks/bench_hqs.py --model <checkpoint.pt> --data /work/shared/datasets/magnetic_tile
    .venv/bin/python benchmarks/bench_hqs.py --model ... --max-test 60 --qat-steps 2 --seeds 0   # a quick subset

Variants (``benchmarks/hqs_variants.py``): fp32, fp32_ft, w8a8, w4a8, ort_static, hqs (knapsack), hqs_raad (RAAD's
step function), hqs_rtn (round-to-nearest 4-bit), hqs_ptq (no stage 2). Every seed (``--seeds``) rebuilds the
variants that depend on it (calibration images, probe defects, QAT and AdaRound sampling); fp32 does not.

Per variant and seed: image AUROC, pixel AUROC and AUPRO, each with a 95% bootstrap interval that redraws whole
tiles of the test split (magnetic_tile photographs each tile six times; ``tile_groups``), and the paired drop
against fp32 with its interval; file bytes (the graph as stored) and run-time weight bytes (what ONNX Runtime
holds after loading it, ``engines.memory``). Latency: the first seed's graphs, timed interleaved at every
``--latency-threads`` count (one run of every variant per cycle, rotating order), p50 per variant and the ratio to
fp32 as the median of same-cycle ratios; and ONNX Runtime's profiler on fp32 and hqs (time per op type, which
kernels ran). Writes ``benchmarks/results/hqs_<dataset>_<time>.json`` with the command,
the machine and the issue's bars checked for ``hqs``; the record is rewritten after every seed (``seeds_done``), so a
run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hqs_variants import VARIANTS, VariantBuilder, seed_everything, work_dir  # noqa: E402
from edge_inspector.bundle.graph_size import initializer_bytes  # noqa: E402
from edge_inspector.config import EngineSettings  # noqa: E402
from edge_inspector.data.folders import holdout_split, load_images, load_test_set, scan_category  # noqa: E402
from edge_inspector.engines.latency import time_graphs  # noqa: E402
from edge_inspector.engines.memory import runtime_weight_bytes  # noqa: E402
from edge_inspector.engines.ort import load_session  # noqa: E402
from edge_inspector.engines.ort_profile import profile_kernels  # noqa: E402
from edge_inspector.engines.records import new_record, script_command, write_json, write_record  # noqa: E402
from edge_inspector.quantization import bootstrap  # noqa: E402
from edge_inspector.quantization.adaround import AdaRoundOptions  # noqa: E402
from edge_inspector.quantization.calibrate import CalibrateOptions  # noqa: E402
from edge_inspector.quantization.qat import QatOptions  # noqa: E402
from edge_inspector.training.heads import choose_head  # noqa: E402
from edge_inspector.training.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402
from edge_inspector.training.trainer import load_checkpoint  # noqa: E402

MAP_STRIDE = 2
"""Maps and masks are compared at half resolution (the maps are upsampled from a 32x32 grid anyway)."""
TILE_GAP = 150
"""magnetic_tile: frames of one tile have numbers within this of each other (``datasets/README.md``)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained HaloAE checkpoint (.pt)")
    p.add_argument("--data", default="/work/shared/datasets/magnetic_tile")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-bits", type=float, default=5.0)
    p.add_argument("--qat-steps", type=int, default=100, help="QAT steps, and fine-tune steps of fp32_ft")
    p.add_argument("--adaround-steps", type=int, default=500)
    p.add_argument("--probe-normals", type=int, default=None, help="held-back goods in the probe (default all)")
    p.add_argument("--defects-per-good", type=int, default=3)
    p.add_argument("--hessian-samples", type=int, default=4)
    p.add_argument("--head", choices=["reconstruction", "location", "fused"], default=None,
                   help="scoring head of every variant (default: the checkpoint preset's, chosen as export does)")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on an evenly spaced subset of the test split")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap redraws")
    p.add_argument("--latency-cycles", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch and evaluation threads")
    p.add_argument("--latency-threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--profile-runs", type=int, default=30,
                   help="ONNX Runtime profiler runs of fp32 and hqs at the first thread count (0: none)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args()


def tile_groups(paths: list[Path]) -> np.ndarray:
    """magnetic_tile's tile of each image (frame numbers within ``TILE_GAP`` of the previous one), else each image
    its own group."""
    numbers = [re.search(r"num_(\d+)", p.name) for p in paths]
    if not all(numbers):
        return np.arange(len(paths))
    values = np.array([int(m.group(1)) for m in numbers])
    order = np.argsort(values)
    tile = np.cumsum(np.r_[0, np.diff(values[order]) > TILE_GAP])
    groups = np.empty(len(paths), int)
    groups[order] = tile
    return groups


def load(args: argparse.Namespace):
    model, preset = load_checkpoint(Path(args.model))
    spec = preset.model
    category = scan_category(args.data, require_test=True)
    fit_paths, holdout_paths = holdout_split(category, preset.train)
    fit = load_images(fit_paths, spec.width, spec.height, spec.resize)
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize)
    images, masks = load_test_set(category, spec.width, spec.height, spec.resize)
    labels = np.array([s.is_anomalous for s in category.test], int)
    groups = tile_groups([s.path for s in category.test])
    if args.max_test:
        pick = np.linspace(0, len(images) - 1, min(args.max_test, len(images))).round().astype(int)
        images, masks, labels, groups = images[pick], masks[pick], labels[pick], groups[pick]
    test = {"images": images, "masks": masks[:, ::MAP_STRIDE, ::MAP_STRIDE], "labels": labels, "groups": groups}
    return model, preset, category, fit, holdout, test


def evaluate(graph: onnx.ModelProto, test: dict, threads: int) -> tuple[dict, bootstrap.PerImage]:
    """Exact metrics and per-image statistics of ``graph`` on the test split."""
    session = load_session(graph, EngineSettings(intra_op_threads=threads)).session
    name = session.get_inputs()[0].name
    maps, scores = [], []
    for image in test["images"]:
        anomaly_map, score = session.run(None, {name: image[None]})
        maps.append(anomaly_map[0, 0, ::MAP_STRIDE, ::MAP_STRIDE])
        scores.append(float(score[0]))
    maps, scores = np.stack(maps), np.array(scores)
    exact = {"image_auroc": image_auroc(scores, test["labels"]), "pixel_auroc": pixel_auroc(maps, test["masks"]),
             "aupro": aupro(maps, test["masks"])}
    return exact, bootstrap.per_image(maps, test["masks"], scores, test["labels"], bins=1024)


def options_for(args: argparse.Namespace, seed: int) -> CalibrateOptions:
    return CalibrateOptions(budget_bits=args.budget_bits, probe_normals=args.probe_normals,
                            defects_per_good=args.defects_per_good, hessian_samples=args.hessian_samples,
                            adaround=AdaRoundOptions(steps=args.adaround_steps, seed=seed),
                            qat=QatOptions(steps=args.qat_steps, seed=seed), accept_drop=True, seed=seed,
                            threads=args.threads, progress=False)


def bars(rows: list[dict]) -> dict:
    """The issue's bars for ``hqs`` of each seed against fp32: image and pixel AUROC within 1 point, latency at
    2 threads <= 0.5x, run-time weight bytes <= 0.3x."""
    fp32 = next(r for r in rows if r["variant"] == "fp32")
    checked = {}
    for row in (r for r in rows if r["variant"] == "hqs"):
        ratio = row.get("latency_ratio_by_threads", {}).get("2")
        checked[f"seed {row['seed']}"] = {
            "image_auroc_within_1pt": fp32["image_auroc"]["value"] - row["image_auroc"]["value"] <= 1.0,
            "pixel_auroc_within_1pt": fp32["pixel_auroc"]["value"] - row["pixel_auroc"]["value"] <= 1.0,
            "latency_le_0.5x_at_2_threads": None if ratio is None else ratio <= 0.5,
            "runtime_weights_le_0.3x": row["runtime_weight_bytes"] <= 0.3 * fp32["runtime_weight_bytes"],
            "latency_ratio_at_2_threads": ratio,
            "runtime_weight_ratio": row["runtime_weight_bytes"] / fp32["runtime_weight_bytes"],
        }
    return checked


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, preset, category, fit, holdout, test = load(args)
    head = args.head or (choose_head(model, preset, holdout).head if preset.score.head == "auto"
                         else preset.score.head)
    print(f"scoring head {head}; {len(test['images'])} test images in {len(set(test['groups']))} tiles", flush=True)
    wanted = args.variants.split(",")
    rows, stats, exact, timed, profiles = [], {}, {}, {}, {}
    path = None  # one record per run, rewritten after every seed: a run cut short keeps the seeds it finished
    with work_dir() as tmp:
        for seed in args.seeds:
            seed_everything(seed)
            builder = VariantBuilder(model, preset, head, fit, holdout, options_for(args, seed), Path(tmp))
            for variant in wanted:
                if variant == "fp32" and seed != args.seeds[0]:
                    continue  # nothing in fp32 depends on the seed
                print(f"--- {variant} seed {seed}", flush=True)
                built = builder.build(variant)
                key = f"{variant}@{seed}"
                exact[key], stats[key] = evaluate(built.graph, test, args.threads)
                rows.append({"variant": variant, "seed": seed, "file_bytes": initializer_bytes(built.graph),
                             "runtime_weight_bytes": runtime_weight_bytes(built.graph), "notes": built.notes})
                if seed == args.seeds[0]:
                    timed[variant] = built.graph
                print(json.dumps({"variant": key, **{k: round(100 * v, 2) for k, v in exact[key].items()}}),
                      flush=True)
            if seed == args.seeds[0]:  # latency and kernel profiles: the first seed's graphs
                time_variants(rows, timed, test["images"][0], args)
                profiles = {name: profile_kernels(timed[name], test["images"][0], EngineSettings(
                    intra_op_threads=args.latency_threads[0]), runs=args.profile_runs).to_dict()
                    for name in ("fp32", "hqs") if name in timed and args.profile_runs > 0}
            doc = record(args, category, head, test, rows, stats, exact, timed, profiles,
                         seeds_done=args.seeds[: args.seeds.index(seed) + 1])
            if path is None:
                path = write_record(args.out, f"hqs_{category.name}", doc)
            else:
                write_json(path, doc)
                print(f"updated {path}", flush=True)
    return 0


def record(args: argparse.Namespace, category, head: str, test: dict, rows: list[dict], stats: dict, exact: dict,
           timed: dict, profiles: dict, seeds_done: list[int]) -> dict:
    """The run's record so far: every finished row with its bootstrap intervals (drops paired against fp32)."""
    reference = f"fp32@{args.seeds[0]}"
    found = bootstrap.intervals(stats, reference if reference in stats else None, test["groups"], args.draws,
                                exact=exact)
    for row in rows:
        row.update({k: v.to_dict() for k, v in found[f"{row['variant']}@{row['seed']}"].items()})
    doc = new_record(script_command(), "torch", "onnxruntime", benchmark="hqs", dataset=str(args.data),
                     n_test=int(len(test["images"])), n_tiles=int(len(set(test["groups"]))),
                     subset=bool(args.max_test), head=head,
                     settings={k: v for k, v in vars(args).items() if k not in ("out",)}, seeds_done=seeds_done,
                     intervals="95% bootstrap over whole test tiles; drops paired against fp32 (points)",
                     results=rows, bars=bars(rows) if "fp32" in timed else {},
                     kernel_profile_us_per_run=profiles)
    doc["machine"].update(threads=args.threads, latency_threads=args.latency_threads)
    return doc


def time_variants(rows: list[dict], graphs: dict[str, onnx.ModelProto], image: np.ndarray,
                  args: argparse.Namespace) -> None:
    """Latency of the first seed's graphs, interleaved run by run (``engines.latency``), at every thread count."""
    ordered = {**({"fp32": graphs["fp32"]} if "fp32" in graphs else {}), **graphs}  # ratios are to fp32
    for threads in dict.fromkeys(args.latency_threads):
        latency = time_graphs(ordered, image, args.latency_cycles, EngineSettings(intra_op_threads=threads))
        for row in (r for r in rows if r["seed"] == args.seeds[0]):
            name = row["variant"]
            row.setdefault("latency_p50_ms_by_threads", {})[str(threads)] = round(latency.p50_ms(name), 3)
            if "fp32" in graphs:
                row.setdefault("latency_ratio_by_threads", {})[str(threads)] = round(latency.ratio(name), 3)
        print(f"latency at {threads} threads:", {n: round(latency.p50_ms(n), 2) for n in ordered}, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
