"""Head benchmark (issue 13): does the HaloAE earn its place? One training of a preset on ``<data>/train/good``, the
checkpoint exported with every scoring head, each bundle evaluated on the full test split through ONNX Runtime.

    .venv/bin/python benchmarks/bench_heads.py 'train.group_by=num_(\\d+)' train.group_gap=150   # magnetic_tile
    .venv/bin/python benchmarks/bench_heads.py --reuse ...          # take the runs already in --work

Rows: the shipped bundle (the preset's ``score.head``) and the ablations location-only, reconstruction-only and
fused, each with image / pixel AUROC, AUPRO, pixel F1 at the bundle's pixel threshold, image F1 at its image
threshold, per defect type and the mean over types. Shipped against location-only: the image AUROC difference with a
paired bootstrap 95 % interval (``bench_input_size.paired_auroc_difference``) and the FP32 ONNX Runtime latency of
both graphs timed interleaved at 1 and 2 threads, with the median of same-cycle ratios.

Writes benchmarks/results/heads_<dataset>_<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from bench_input_size import image_scores, paired_auroc_difference
from edge_inspector.engines.records import new_record, script_command, write_record

HERE = Path(__file__).resolve().parent
HEADS = ("location", "reconstruction", "fused")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "image_f1")
LATENCY_CYCLES = 100
BARS = {"image_auroc": 0.860, "pixel_auroc": 0.805, "aupro": 0.764}
"""Issue 13 on the tile-split magnetic_tile: 3 points above the better of anomalib's PaDiM and PatchCore."""


def _run(argv: list[str], done: Path, reuse: bool) -> str:
    from edge_inspector.cli import main as cli

    if not (reuse and done.is_file()) and cli(argv) != 0:
        raise SystemExit(f"failed: edge-inspector {' '.join(argv)}")
    return "edge-inspector " + " ".join(argv)


def _figures(result: dict) -> dict:
    metrics = result["metrics"]
    per_type = {k: {m: v.get(m) for m in METRICS} for k, v in metrics.items() if k != "overall"}
    mean = {m: float(np.mean([v[m] for v in per_type.values() if v[m] is not None])) for m in METRICS}
    return {**{m: metrics["overall"].get(m) for m in METRICS}, "mean_over_defect_types": mean,
            "per_defect_type": per_type}


def paired_latency(bundles: dict[str, Path], threads: int) -> dict:
    """FP32 ONNX Runtime latency of ``bundles``, interleaved, on their calibration images; ratios vs location."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.latency import engine_runner, interleaved_latency
    from edge_inspector.engines.ort import OrtEngine

    engines = {name: OrtEngine(load_bundle(path), EngineSettings(intra_op_threads=threads))
               for name, path in bundles.items()}
    try:
        latency = interleaved_latency({name: engine_runner(e, e.bundle.calibration_images())
                                       for name, e in engines.items()}, LATENCY_CYCLES)
    finally:
        for engine in engines.values():
            engine.close()
    return {"p50_ms": {name: latency.p50_ms(name) for name in engines},
            "ratio_over_location": {name: latency.ratio(name, "location") for name in engines if name != "location"},
            "cycles": LATENCY_CYCLES, "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/magnetic_tile", help="MVTec-layout category folder")
    parser.add_argument("--config", default="haloae-lite", help="preset name or YAML path")
    parser.add_argument("--threads", type=int, default=0, help="train.threads and eval threads (0 = all)")
    parser.add_argument("--work", default=str(HERE / "work" / "heads"), help="bundles and evals (git-ignored)")
    parser.add_argument("--reuse", action="store_true", help="skip a train, export or eval whose output exists")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides")
    args = parser.parse_args()
    work = Path(args.work)
    shipped = work / "shipped"
    threads = [f"train.threads={args.threads}"] if args.threads else []
    commands = [_run(["train", "--data", args.data, "--config", args.config, "--out", str(shipped), "--no-progress",
                      *threads, *args.overrides], shipped / "manifest.yaml", args.reuse)]
    checkpoint = work / "shipped.work" / "checkpoints" / "last.pt"
    bundles = {"shipped": shipped}
    for head in HEADS:
        bundles[head] = work / head
        commands.append(_run(["export", "--checkpoint", str(checkpoint), "--data", args.data, "--out",
                              str(bundles[head]), "--no-progress", f"score.head={head}"],
                             bundles[head] / "manifest.yaml", args.reuse))
    figures = {}
    for name, bundle in bundles.items():
        out = work / f"eval_{name}"
        commands.append(_run(["eval", "--model", str(bundle), "--data", args.data, "--out", str(out), "--threads",
                              str(args.threads), "--overlays", "0", "--no-progress"], out / "result.json",
                             args.reuse))
        head = yaml.safe_load((bundle / "manifest.yaml").read_text())["score"]["head"]
        figures[name] = {"head": head, **_figures(json.loads((out / "result.json").read_text()))}
    (a, labels), (b, _) = image_scores(shipped, args.data), image_scores(bundles["location"], args.data)
    manifest = yaml.safe_load((shipped / "manifest.yaml").read_text())
    timed = {name: bundles[name] for name in ("location", "reconstruction", "fused")}
    record = new_record(script_command(), "torch", "onnxruntime", **{
        "benchmark": "heads",
        "dataset": Path(args.data).name,
        "preset": args.config,
        "overrides": args.overrides,
        "commands": commands,
        "training": {k: manifest["training"].get(k) for k in ("epochs", "seed", "n_fit", "n_holdout", "duration_s",
                                                              "holdout", "input_size")},
        "input": {k: manifest["input"][k] for k in ("width", "height")},
        "figures": figures,
        "shipped_minus_location_image_auroc": paired_auroc_difference(a, b, labels),
        "latency": {str(t): paired_latency(timed, t) for t in (1, 2)},
        "bars": {k: {"min": v, "value": figures["shipped"][k], "met": figures["shipped"][k] >= v}
                 for k, v in BARS.items()},
    })
    path = write_record(HERE / "results", f"heads_{Path(args.data).name}", record)
    print(summary(record))
    print(f"record {path}")
    return 0


def summary(record: dict) -> str:
    lines = []
    for name, f in record["figures"].items():
        mean = f["mean_over_defect_types"]
        lines.append(f"{name:14s} ({f['head']:14s}) image / pixel AUROC / AUPRO / pixel F1 {f['image_auroc']:.3f} / "
                     f"{f['pixel_auroc']:.3f} / {f['aupro']:.3f} / {f['pixel_f1']:.3f}; mean over types "
                     f"{mean['image_auroc']:.3f} / {mean['pixel_auroc']:.3f} / {mean['aupro']:.3f}")
    d = record["shipped_minus_location_image_auroc"]
    lines.append(f"shipped - location image AUROC {d['difference']:+.3f} (95 % CI {d['ci95'][0]:+.3f} to "
                 f"{d['ci95'][1]:+.3f})")
    for t, lat in record["latency"].items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in lat["ratio_over_location"].items())
        lines.append(f"{t} thread(s): p50 " + ", ".join(f"{k} {v:.1f} ms" for k, v in lat["p50_ms"].items())
                     + f"; over location: {ratios}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
