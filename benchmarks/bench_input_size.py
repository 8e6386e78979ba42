"""Input size benchmark (issue 18): the size ``train`` chooses from the training images against a fixed 256x256,
same preset, same seed, each trained on ``<data>/train/good`` and evaluated on the full test split (ONNX Runtime).

    .venv/bin/python benchmarks/bench_input_size.py                   # magnetic_tile, haloae-lite (long on 2 cores)
    .venv/bin/python benchmarks/bench_input_size.py --reuse           # take the runs already in --work

``score.head: auto`` may ship a different head at each size, which would mix the head's effect into the size's: so
each trained model is also exported with every head (``export --checkpoint ... score.head=X``) and the sizes are
compared head by head too.

Writes benchmarks/results/input_size_<dataset>_<stamp>.json: per variant the chosen size and why (the manifest's
``training.input_size``) and per bundle (shipped head, then each head) image / pixel AUROC and AUPRO overall, per
defect type and their mean over types; per head, auto against 256x256: the image AUROC difference with a paired
bootstrap 95 % interval (images resampled within good and defective, both models scored on the same resample) and
the ONNX Runtime latency of the two bundles timed interleaved, with their ratio.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
import yaml

from edge_inspector.engines.records import new_record, script_command, write_record
from edge_inspector.model.presets import load_preset

HERE = Path(__file__).resolve().parent
VARIANTS = {"auto": [], "fixed256": ["model.width=256", "model.height=256"]}
"""Variant name -> size overrides: none (the size comes from the images) or the presets' former 256x256."""
HEADS = ("reconstruction", "location", "fused")
BOOTSTRAP = 2000
LATENCY_CYCLES = 100
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _run(argv: list[str], done: Path, reuse: bool) -> str:
    """Run an edge-inspector command unless ``reuse`` and its output exists; the command as text."""
    from edge_inspector.cli import main as cli

    if not (reuse and done.is_file()) and cli(argv) != 0:
        raise SystemExit(f"failed: edge-inspector {shlex.join(argv)}")
    return f"edge-inspector {shlex.join(argv)}"


def _evaluate(args: argparse.Namespace, bundle: Path) -> tuple[dict, str]:
    """Figures of one bundle on the test split, and the eval command."""
    out = bundle.with_name(f"eval_{bundle.name}")
    command = _run(["eval", "--model", str(bundle), "--data", args.data, "--out", str(out), "--threads",
                    str(args.threads), "--overlays", "0", "--no-progress"], out / "result.json", args.reuse)
    result = json.loads((out / "result.json").read_text())
    per_type = {k: {m: v[m] for m in METRICS} for k, v in result["metrics"].items() if k != "overall"}
    head = yaml.safe_load((bundle / "manifest.yaml").read_text())["score"]["head"]
    return {"head": head, **{m: result["metrics"]["overall"][m] for m in METRICS},
            "mean_over_defect_types": {m: float(np.mean([v[m] for v in per_type.values()])) for m in METRICS},
            "per_defect_type": per_type}, command


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """Train one variant, export it with every head, evaluate every bundle; its figures and commands."""
    bundle = Path(args.work) / variant
    threads = [f"train.threads={args.threads}"] if args.threads else []
    commands = [_run(["train", "--data", args.data, "--config", args.config, "--out", str(bundle), "--no-progress",
                      *VARIANTS[variant], *threads, *args.overrides], bundle / "manifest.yaml", args.reuse)]
    bundles = {"shipped": bundle}
    checkpoint = bundle.with_name(bundle.name + ".work") / "checkpoints" / "last.pt"
    for head in HEADS:
        bundles[head] = bundle.with_name(f"{variant}.{head}")
        commands.append(_run(["export", "--checkpoint", str(checkpoint), "--data", args.data, "--out",
                              str(bundles[head]), "--no-progress", f"score.head={head}"],
                             bundles[head] / "manifest.yaml", args.reuse))
    figures = {}
    for name, path in bundles.items():
        figures[name], command = _evaluate(args, path)
        commands.append(command)
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    return {
        "commands": commands,
        "bundles": {name: str(path) for name, path in bundles.items()},
        "input": {k: manifest["input"][k] for k in ("width", "height", "resize")},
        "input_size": manifest["training"].get("input_size"),
        "training": {k: manifest["training"].get(k) for k in ("epochs", "seed", "n_fit", "n_holdout", "duration_s")},
        "figures": figures,
    }


def image_scores(bundle: Path, data: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_defective) of every test image through the bundle in ONNX Runtime, at the bundle's input size."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.data.folders import load_images, scan_category
    from edge_inspector.engines.ort import OrtEngine

    opened = load_bundle(bundle)
    spec = opened.manifest.input
    category = scan_category(data, require_test=True)
    images = load_images([s.path for s in category.test], spec.width, spec.height, spec.resize, spec.pad_value)
    engine = OrtEngine(opened)
    try:
        scores = np.array([engine.infer(image).score for image in images])
    finally:
        engine.close()
    return scores, np.array([s.is_anomalous for s in category.test])


def paired_auroc_difference(a: np.ndarray, b: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Image AUROC of a minus b, with a paired, stratified bootstrap 95 % interval."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(~labels), np.flatnonzero(labels)
    diffs = []
    for _ in range(BOOTSTRAP):
        pick = np.concatenate([rng.choice(good, good.size), rng.choice(bad, bad.size)])
        diffs.append(roc_auc_score(labels[pick], a[pick]) - roc_auc_score(labels[pick], b[pick]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": float(roc_auc_score(labels, a) - roc_auc_score(labels, b)), "ci95": [float(low), float(high)],
            "bootstrap_resamples": BOOTSTRAP}


def paired_latency(auto: Path, fixed: Path, threads: int) -> dict:
    """ONNX Runtime latency of the two bundles, interleaved, on their calibration images (ms, ratio auto / fixed)."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.latency import engine_runner, interleaved_latency
    from edge_inspector.engines.ort import OrtEngine

    engines = {name: OrtEngine(load_bundle(path), EngineSettings(intra_op_threads=threads))
               for name, path in (("fixed256", fixed), ("auto", auto))}
    try:
        latency = interleaved_latency({name: engine_runner(e, e.bundle.calibration_images())
                                       for name, e in engines.items()}, LATENCY_CYCLES)
    finally:
        for engine in engines.values():
            engine.close()
    return {"p50_ms": {name: latency.p50_ms(name) for name in engines}, "ratio_auto_over_fixed256": latency.ratio("auto"),
            "cycles": LATENCY_CYCLES, "threads": threads or "one per core"}


def compare(args: argparse.Namespace, variants: dict) -> dict:
    """Per bundle kind (shipped, each head): auto against 256x256 in image AUROC (bootstrap) and latency."""
    out = {}
    for kind in ("shipped", *HEADS):
        auto, fixed = (Path(variants[v]["bundles"][kind]) for v in ("auto", "fixed256"))
        (a, labels), (b, _) = image_scores(auto, args.data), image_scores(fixed, args.data)
        out[kind] = {"heads": {v: variants[v]["figures"][kind]["head"] for v in variants},
                     "image_auroc_auto_minus_fixed256": paired_auroc_difference(a, b, labels),
                     "latency": paired_latency(auto, fixed, args.threads)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/magnetic_tile", help="MVTec-layout category folder")
    parser.add_argument("--config", default="haloae-lite", help="preset name or YAML path")
    parser.add_argument("--threads", type=int, default=0, help="train.threads and ONNX Runtime threads (0 = all)")
    parser.add_argument("--work", default=str(HERE / "work" / "input_size"), help="bundles and evals (git-ignored)")
    parser.add_argument("--reuse", action="store_true", help="skip a train, export or eval whose output exists")
    parser.add_argument("--note", default=None, help="how the runs were made, if not by this script (recorded)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides for both variants")
    args = parser.parse_args()
    fraction = load_preset(args.config, args.overrides).train.holdout_fraction
    variants = {name: run_variant(args, name) for name in VARIANTS}
    record = new_record(script_command(), "torch", "onnxruntime", **{
        "benchmark": "input_size",
        "dataset": Path(args.data).name,
        "preset": args.config,
        "overrides": args.overrides,
        "holdout": f"seeded random {fraction:.0%} of train/good (train.holdout_fraction), not grouped by part",
        "note": args.note,
        "variants": variants,
        "auto_against_fixed256": compare(args, variants),
    })
    path = write_record(HERE / "results", f"input_size_{Path(args.data).name}", record)
    print(summary(record))
    print(f"record {path}")
    return 0


def summary(record: dict) -> str:
    """One line per variant and bundle kind, then the per-kind comparison."""
    lines = []
    for name, v in record["variants"].items():
        for kind, f in v["figures"].items():
            mean = f["mean_over_defect_types"]
            lines.append(f"{name:9s} {v['input']['width']}x{v['input']['height']} {kind:14s} ({f['head']:14s}) "
                         f"image / pixel AUROC / AUPRO {f['image_auroc']:.3f} / {f['pixel_auroc']:.3f} / "
                         f"{f['aupro']:.3f}; mean over types {mean['image_auroc']:.3f} / {mean['pixel_auroc']:.3f} / "
                         f"{mean['aupro']:.3f}")
    for kind, c in record["auto_against_fixed256"].items():
        d, lat = c["image_auroc_auto_minus_fixed256"], c["latency"]
        lines.append(f"{kind:14s} image AUROC auto - 256x256 {d['difference']:+.3f} (95 % CI {d['ci95'][0]:+.3f} to "
                     f"{d['ci95'][1]:+.3f}); latency p50 {lat['p50_ms']['auto']:.1f} vs {lat['p50_ms']['fixed256']:.1f}"
                     f" ms, ratio {lat['ratio_auto_over_fixed256']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
