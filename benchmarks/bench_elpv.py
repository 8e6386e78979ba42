"""Second material: ELPV solar cells (the ``elpv-dataset`` package, dev extra), through the product's own commands.

magnetic_tile is the only material every other figure comes from; this runs ``train`` (default preset), ``export
--checkpoint ... score.head=X`` for every head and ``eval`` (ONNX Runtime) on a second, unrelated one, so a choice
tuned on tiles shows whether it carries over.

    .venv/bin/python benchmarks/bench_elpv.py                   # full run (long on 2 cores)
    .venv/bin/python benchmarks/bench_elpv.py --smoke           # pipeline check: 40 train, ~40 test, 1 epoch
    .venv/bin/python benchmarks/bench_elpv.py --reuse           # take the steps already in --work

ELPV: 2624 EL images (300x300 gray) of mono- and polycrystalline cells, each with an expert's defect probability in
{0, 1/3, 2/3, 1} and no pixel masks, so eval reports image figures only. The split (seeded by --seed, stratified by
cell type, written to ``<layout>/split.csv`` with every cell's role):

* probability 0 (functional, 1508 cells) is the normal class. --test-share (25 %) of them go to ``test/good``; the
  rest is the training pool, of which a seeded subsample of at most --max-train (700) goes to ``train/good``:
  haloae-lite's budget (epochs x images) is sized for ~600 images, and more would only lengthen training.
* probability >= 2/3 (821 cells) all go to test, one folder per cell type: ``defect_mono``, ``defect_poly``. Mono
  and poly cells look different (poly's crystal grains read as texture), so per-type figures say whether the model
  finds defects on each surface; the record adds each type against its own type's good cells, and 2/3 against 1.
* probability 1/3 (295 cells) is left out (role ``excluded`` in split.csv). The annotators leaned towards
  functional but were unsure: in train/good they could teach possible defects as normal, in test/good they would
  count flagging a possibly real defect as an error, and as a defect type they would be scored against a label the
  annotators themselves rated unlikely. Any of the three would mix label noise into the headline figures.

Writes benchmarks/results/elpv_<stamp>.json (--smoke: <work>/elpv_smoke_<stamp>.json, a pipeline check and no
figure): the commands, wall times, the split's counts, per bundle (shipped by train, then each head) image AUROC
overall, per type and their mean over types, F1 / recall at the bundle's own threshold, and the breakdowns above.
Work files go to benchmarks/work/elpv/ (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import shutil
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge_inspector.engines.records import new_record, script_command, write_record

HERE = Path(__file__).resolve().parent
HEADS = ("reconstruction", "location", "fused")
CELL_TYPES = ("mono", "poly")
SPLIT_NAME = "split.csv"
METRICS = ("image_auroc", "image_f1", "image_recall", "image_precision", "n_images")
SMOKE = {"train": 40, "test": 40, "overrides": ["train.epochs=1"]}
"""--smoke: train/good images, test images (all folders together) and the short schedule (~9 steps)."""


def split_cells(probs: np.ndarray, types: np.ndarray, seed: int, test_share: float, max_train: int) -> list[str]:
    """Every cell's role: its folder under the layout ('train/good', 'test/good', 'test/defect_<type>'), or
    'excluded' (probability 1/3) or 'unused' (functional, beyond --max-train). Seeded, stratified by cell type."""
    rng = np.random.default_rng(seed)
    roles = ["excluded"] * len(probs)
    good = {t: rng.permutation(np.flatnonzero((probs == 0) & (types == t))) for t in CELL_TYPES}
    n_test = {t: round(len(good[t]) * test_share) for t in CELL_TYPES}
    pool_size = sum(len(good[t]) - n_test[t] for t in CELL_TYPES)
    for cell_type in CELL_TYPES:
        pool = good[cell_type][n_test[cell_type]:]
        n_train = int(len(pool) * min(1.0, max_train / pool_size))  # floor: never above max_train in all
        for index in good[cell_type][:n_test[cell_type]]:
            roles[index] = "test/good"
        for position, index in enumerate(pool):
            roles[index] = "train/good" if position < n_train else "unused"
        for index in np.flatnonzero((probs > 0.5) & (types == cell_type)):
            roles[index] = f"test/defect_{cell_type}"
    return roles


def smoke_subset(roles: list[str], n_train: int, n_test: int, seed: int) -> list[str]:
    """The smoke layout: ``n_train`` of train/good and about ``n_test`` test images, each test folder in its share
    (at least 2); every other cell becomes 'unused'."""
    rng = np.random.default_rng(seed + 1)
    out = ["unused" if r.startswith(("train/", "test/")) else r for r in roles]
    test_folders = sorted({r for r in roles if r.startswith("test/")})
    n_all_test = sum(r.startswith("test/") for r in roles)
    wanted = {"train/good": n_train, **{f: max(2, round(n_test * roles.count(f) / n_all_test)) for f in test_folders}}
    for folder, n in wanted.items():
        for index in rng.permutation([i for i, r in enumerate(roles) if r == folder])[:n]:
            out[index] = folder
    return out


def materialise(args: argparse.Namespace) -> Path:
    """Write the MVTec-like layout once (its name holds every split setting); the folder."""
    from elpv_dataset.utils import load_dataset

    name = f"seed{args.seed}-test{round(args.test_share * 100)}-train{args.max_train}"
    layout = Path(args.work) / (f"{name}-smoke{SMOKE['train']}x{SMOKE['test']}" if args.smoke else name)
    if (layout / SPLIT_NAME).is_file():
        return layout
    images, probs, types = load_dataset()
    roles = split_cells(probs, types, args.seed, args.test_share, args.max_train)
    if args.smoke:
        roles = smoke_subset(roles, SMOKE["train"], SMOKE["test"], args.seed)
    partial = layout.with_name(layout.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for index, role in enumerate(roles):
        if role.startswith(("train/", "test/")):
            (partial / role).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(partial / role / f"elpv_{index:04d}.png"), images[index])
    with open(partial / SPLIT_NAME, "w", newline="") as handle:  # last: its presence marks a complete layout
        writer = csv.writer(handle)
        writer.writerow(["index", "probability", "cell_type", "role"])
        writer.writerows([i, f"{p:.4f}", t, r] for i, (p, t, r) in enumerate(zip(probs, types, roles)))
    partial.rename(layout)
    return layout


def read_split(layout: Path) -> list[dict]:
    """split.csv's rows (index, probability, cell_type, role), in the package's order."""
    with open(layout / SPLIT_NAME, newline="") as handle:
        return list(csv.DictReader(handle))


def _run(argv: list[str], done: Path, reuse: bool, timings: dict) -> str:
    """Run an edge-inspector command unless ``reuse`` and its output exists; the command as text (its wall time
    in ``timings`` under the subcommand and the output's name, about 0 when reused)."""
    from edge_inspector.cli import main as cli

    command = f"edge-inspector {shlex.join(argv)}"
    start = time.perf_counter()
    if not (reuse and done.is_file()) and cli(argv) != 0:
        raise SystemExit(f"failed: {command}")
    timings[f"{argv[0]} {done.parent.name.removeprefix('eval_')}"] = round(time.perf_counter() - start, 1)
    return command


def run_dir(args: argparse.Namespace, layout: Path) -> Path:
    """Where this layout's runs go: one folder per preset and override list (so --reuse never mixes them)."""
    tag = Path(args.config).stem
    if args.overrides:
        tag += "-" + hashlib.sha1(" ".join(args.overrides).encode()).hexdigest()[:8]
    return Path(args.work) / "runs" / layout.name / tag


def train_and_export(args: argparse.Namespace, layout: Path, timings: dict) -> tuple[dict[str, Path], list[str]]:
    """Train with the preset, export the checkpoint with every head; bundle kind -> folder, and the commands."""
    shipped = run_dir(args, layout) / "shipped"
    threads = [f"train.threads={args.threads}"] if args.threads else []
    commands = [_run(["train", "--data", str(layout), "--config", args.config, "--out", str(shipped),
                      "--no-progress", *threads, *args.overrides], shipped / "manifest.yaml", args.reuse, timings)]
    bundles = {"shipped": shipped}
    checkpoint = shipped.with_name(shipped.name + ".work") / "checkpoints" / "last.pt"
    for head in HEADS:
        bundles[head] = shipped.with_name(head)
        commands.append(_run(["export", "--checkpoint", str(checkpoint), "--data", str(layout), "--out",
                              str(bundles[head]), "--no-progress", f"score.head={head}"],
                             bundles[head] / "manifest.yaml", args.reuse, timings))
    return bundles, commands


def evaluate(args: argparse.Namespace, layout: Path, bundle: Path, timings: dict) -> tuple[dict, str]:
    """Image figures of one bundle on the test split (overall, per type, mean over types, breakdowns); the command."""
    out = bundle.with_name(f"eval_{bundle.name}")
    command = _run(["eval", "--model", str(bundle), "--data", str(layout), "--out", str(out), "--threads",
                    str(args.threads), "--overlays", "0", "--no-progress"], out / "result.json", args.reuse, timings)
    result = json.loads((out / "result.json").read_text())
    metrics = result["metrics"]
    pick = (lambda figures: {m: figures[m] for m in METRICS if m in figures})
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    return {"head": manifest["score"]["head"], "threshold": result["thresholds"]["image"],
            **pick(metrics["overall"]),
            "mean_over_defect_types": result["mean_over_types"],
            "per_defect_type": {k: pick(v) for k, v in metrics.items() if k != "overall"},
            **breakdown(out / "images.csv", read_split(layout))}, command


def breakdown(images_csv: Path, split: list[dict]) -> dict:
    """Image AUROC of each cell type's defects against that type's good cells only, and of each defect
    probability (2/3, 1) against every good cell: what the per-folder figures fold together."""
    from edge_inspector.training.metrics import image_auroc

    by_index = {int(row["index"]): row for row in split}
    with open(images_csv, newline="") as handle:
        rows = [(by_index[int(Path(r["file"]).stem.split("_")[1])], r["truth"] == "defect", float(r["score"]))
                for r in csv.DictReader(handle)]

    def auroc(keep) -> float | None:
        picked = [(bad, score) for cell, bad, score in rows if keep(cell, bad)]
        labels = np.array([bad for bad, _ in picked])
        return image_auroc(np.array([s for _, s in picked]), labels) if 0 < labels.sum() < len(labels) else None

    within = {t: auroc(lambda cell, bad, t=t: cell["cell_type"] == t) for t in CELL_TYPES}
    probabilities = sorted({float(cell["probability"]) for cell, bad, _ in rows if bad})
    by_probability = {f"{p:.3f}": auroc(lambda cell, bad, p=p: not bad or float(cell["probability"]) == p)
                      for p in probabilities}
    return {"image_auroc_within_cell_type": within, "image_auroc_by_defect_probability": by_probability}


def split_counts(layout: Path) -> dict:
    """Cells per role, per cell type and defect probability."""
    counts: dict[str, dict[str, int]] = {}
    for row in read_split(layout):
        key = f"{row['cell_type']} p={float(row['probability']):.3f}"
        role = counts.setdefault(row["role"], {})
        role[key] = role.get(key, 0) + 1
    return {role: dict(sorted(c.items())) for role, c in sorted(counts.items())}


def main() -> int:
    args = parse_args()
    if args.smoke:
        args.overrides = [*SMOKE["overrides"], *args.overrides]
    start = time.perf_counter()
    layout = materialise(args)
    timings: dict[str, float] = {"materialise layout": round(time.perf_counter() - start, 1)}
    bundles, commands = train_and_export(args, layout, timings)
    figures = {}
    for kind, bundle in bundles.items():
        figures[kind], command = evaluate(args, layout, bundle, timings)
        commands.append(command)
    manifest = yaml.safe_load((bundles["shipped"] / "manifest.yaml").read_text())
    record = new_record(script_command(), "torch", "onnxruntime", "elpv-dataset", **{
        "benchmark": "elpv",
        "dataset": {"package": f"elpv-dataset {metadata.version('elpv-dataset')}", "layout": str(layout),
                    "split_seed": args.seed, "test_share_of_functional": args.test_share,
                    "max_train": SMOKE["train"] if args.smoke else args.max_train, "smoke": args.smoke,
                    "counts": split_counts(layout),
                    "policy": "probability 0 = good (test share held out per cell type, train/good a seeded "
                              "subsample of the rest); >= 2/3 = test/defect_<cell type>; 1/3 excluded"},
        "preset": args.config,
        "overrides": args.overrides,
        "threads": args.threads or "one per core",
        "commands": commands,
        "wall_s": {**timings, "total": round(time.perf_counter() - start, 1)},
        "input": {k: manifest["input"][k] for k in ("width", "height", "resize")},
        "training": {k: manifest["training"].get(k) for k in ("epochs", "seed", "n_fit", "n_holdout", "duration_s")},
        "head_probe": manifest["score"].get("head_probe"),
        "bundles": {kind: str(path) for kind, path in bundles.items()},
        "figures": figures,
    })
    # A smoke record checks the pipeline, it is no figure: it stays in the work folder, out of results/.
    folder, stem = (Path(args.work), "elpv_smoke") if args.smoke else (HERE / "results", "elpv")
    path = write_record(folder, stem, record)
    print(summary(record))
    print(f"record {path}")
    return 0


def summary(record: dict) -> str:
    """One line per bundle: head, image AUROC overall, per type, mean over types, within each cell type."""
    lines = []
    for kind, f in record["figures"].items():
        per_type = "  ".join(f"{t} {v['image_auroc']:.3f}" for t, v in f["per_defect_type"].items())
        within = "  ".join(f"{t} {v:.3f}" for t, v in f["image_auroc_within_cell_type"].items() if v is not None)
        lines.append(f"{kind:14s} ({f['head']:14s}) image AUROC {f['image_auroc']:.3f}; {per_type}; mean over types "
                     f"{f['mean_over_defect_types']['image_auroc']:.3f}; within cell type: {within}")
    lines.append(f"wall time {record['wall_s']['total']:.0f} s")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="haloae-lite", help="preset name or YAML path")
    parser.add_argument("--override", dest="overrides", action="append", default=[], metavar="key=value",
                        help="preset override for train (repeatable), e.g. --override train.epochs=3")
    parser.add_argument("--threads", type=int, default=0, help="train.threads and ONNX Runtime threads (0 = all)")
    parser.add_argument("--work", default=os.path.relpath(HERE / "work" / "elpv"),
                        help="layouts, bundles, evals, smoke records (git-ignored)")
    parser.add_argument("--reuse", action="store_true", help="skip a train, export or eval whose output exists")
    parser.add_argument("--max-train", type=int, default=700, help="at most this many train/good images (seeded)")
    parser.add_argument("--test-share", type=float, default=0.25, help="share of functional cells held out for test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (training has the preset's)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"pipeline check: {SMOKE['train']} train and ~{SMOKE['test']} test images, "
                             f"{' '.join(SMOKE['overrides'])}")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
