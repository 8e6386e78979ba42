"""Input size benchmark (issue 18): the size ``train`` chooses from the training images against a fixed 256x256,
same preset, same seed, each trained on ``<data>/train/good`` and evaluated on the full test split (ONNX Runtime).

    .venv/bin/python benchmarks/bench_input_size.py                   # magnetic_tile, haloae-lite (long on 2 cores)
    .venv/bin/python benchmarks/bench_input_size.py --reuse           # record runs already in --work, train nothing

Writes benchmarks/results/input_size_<dataset>_<stamp>.json: per variant the chosen size and why (the manifest's
``training.input_size``), image / pixel AUROC and AUPRO overall, per defect type and their mean over types, training
time and ONNX Runtime latency; between the variants the image AUROC difference with a paired bootstrap 95 % interval
(images resampled within good and defective, both models scored on the same resample).
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
BOOTSTRAP = 2000
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def commands(args: argparse.Namespace, variant: str) -> tuple[list[str], list[str], Path, Path]:
    """The train and eval command lines of one variant, its bundle and its eval folder."""
    bundle, evaluated = Path(args.work) / variant, Path(args.work) / f"eval_{variant}"
    threads = [f"train.threads={args.threads}"] if args.threads else []
    train = ["train", "--data", args.data, "--config", args.config, "--out", str(bundle), "--no-progress",
             *VARIANTS[variant], *threads, *args.overrides]
    evaluate = ["eval", "--model", str(bundle), "--data", args.data, "--out", str(evaluated), "--threads",
                str(args.threads), "--overlays", "0", "--no-progress"]
    return train, evaluate, bundle, evaluated


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """Train and evaluate one variant (or, with --reuse, take what is already there) and gather its figures."""
    from edge_inspector.cli import main as cli

    train, evaluate, bundle, evaluated = commands(args, variant)
    for argv, done in ((train, bundle / "manifest.yaml"), (evaluate, evaluated / "result.json")):
        if args.reuse and done.is_file():
            continue
        if cli(argv) != 0:
            raise SystemExit(f"failed: edge-inspector {shlex.join(argv)}")
    result = json.loads((evaluated / "result.json").read_text())
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    per_type = {k: {m: v[m] for m in METRICS} for k, v in result["metrics"].items() if k != "overall"}
    return {
        "commands": [f"edge-inspector {shlex.join(train)}", f"edge-inspector {shlex.join(evaluate)}"],
        "bundle": str(bundle),
        "input": {k: manifest["input"][k] for k in ("width", "height", "resize")},
        "input_size": manifest["training"].get("input_size"),
        **{m: result["metrics"]["overall"][m] for m in METRICS},
        "mean_over_defect_types": {m: float(np.mean([v[m] for v in per_type.values()])) for m in METRICS},
        "per_defect_type": per_type,
        "head": manifest["score"]["head"],
        "training": {k: manifest["training"].get(k) for k in ("epochs", "seed", "n_fit", "n_holdout", "duration_s")},
        "latency_ms_per_image": result["latency_ms"],
        "model_id": manifest["model_id"],
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/magnetic_tile", help="MVTec-layout category folder")
    parser.add_argument("--config", default="haloae-lite", help="preset name or YAML path")
    parser.add_argument("--threads", type=int, default=0, help="train.threads and eval --threads (0 = every core)")
    parser.add_argument("--work", default=str(HERE / "work" / "input_size"), help="bundles and evals (git-ignored)")
    parser.add_argument("--reuse", action="store_true", help="skip a train or eval whose output is already in --work")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides for both variants")
    args = parser.parse_args()
    fraction = load_preset(args.config, args.overrides).train.holdout_fraction
    variants = {name: run_variant(args, name) for name in VARIANTS}
    scores = {name: image_scores(Path(v["bundle"]), args.data) for name, v in variants.items()}
    labels = scores["auto"][1]
    record = new_record(script_command(), "torch", "onnxruntime", **{
        "benchmark": "input_size",
        "dataset": Path(args.data).name,
        "preset": args.config,
        "overrides": args.overrides,
        "holdout": f"seeded random {fraction:.0%} of train/good (train.holdout_fraction), not grouped by part",
        "variants": variants,
        "image_auroc_auto_minus_fixed256": paired_auroc_difference(scores["auto"][0], scores["fixed256"][0], labels),
    })
    path = write_record(HERE / "results", f"input_size_{Path(args.data).name}", record)
    for name, v in variants.items():
        print(f"{name:9s} {v['input']['width']}x{v['input']['height']}: image AUROC {v['image_auroc']:.3f}, pixel "
              f"AUROC {v['pixel_auroc']:.3f}, AUPRO {v['aupro']:.3f}; mean over types "
              + ", ".join(f"{v['mean_over_defect_types'][m]:.3f}" for m in METRICS))
    diff = record["image_auroc_auto_minus_fixed256"]
    print(f"image AUROC auto - 256x256: {diff['difference']:+.3f} (95 % CI {diff['ci95'][0]:+.3f} to "
          f"{diff['ci95'][1]:+.3f}); record {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
