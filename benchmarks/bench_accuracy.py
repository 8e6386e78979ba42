"""Accuracy benchmark (issue 2): train HaloAE on <data>/train/good only, evaluate the exported bundle on the full test
split through ONNX Runtime, for the real halo attention and the official code's block_mean side by side.

Bar: on magnetic_tile at 256x256, image AUROC >= 0.92 and pixel AUROC >= 0.80.

    .venv/bin/python benchmarks/bench_accuracy.py                          # full run (long on 2 cores)
    .venv/bin/python benchmarks/bench_accuracy.py --max-train 60 train.epochs=2   # quick pipeline check

Each variant writes benchmarks/results/accuracy_<dataset>_<preset>_<attention>[_subset]_<stamp>.json (command, date, machine,
dataset, model, image_auroc, pixel_auroc, aupro, per defect type, training time, latency) and the table in
benchmarks/README.md is rebuilt from every result file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

from edge_inspector.engines.records import new_record, script_command, write_record

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
TABLE_START, TABLE_END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
BARS = {"image_auroc": 0.92, "pixel_auroc": 0.80}
HEADS = ("reconstruction", "location", "fused")


def every_head(args: argparse.Namespace, tag: str, bundle: Path) -> tuple[dict, list[str]]:
    """The same trained model scored with every head, side by side (export changes only score.*): overall image
    AUROC, pixel AUROC and AUPRO per head, and the commands that produced them."""
    from edge_inspector.cli import main as cli

    data = Path(args.data)
    checkpoint = bundle.with_name(bundle.name + ".work") / "checkpoints" / "last.pt"
    heads, commands = {}, []
    for head in HEADS:
        head_bundle, head_eval = Path(args.work) / f"{tag}.{head}.bundle", Path(args.work) / f"{tag}.{head}.eval"
        export_argv = ["export", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(head_bundle),
                       "--no-progress", f"score.head={head}"]
        eval_argv = ["eval", "--model", str(head_bundle), "--data", str(data), "--out", str(head_eval),
                     "--threads", str(args.threads), "--overlays", "0", "--no-progress"]
        if cli(export_argv) != 0 or cli(eval_argv) != 0:
            raise SystemExit(f"scoring head {head} failed")
        m = json.loads((head_eval / "result.json").read_text())["metrics"]["overall"]
        heads[head] = {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        commands += [f"edge-inspector {shlex.join(export_argv)}", f"edge-inspector {shlex.join(eval_argv)}"]
    return heads, commands


def run_variant(args: argparse.Namespace, attention: str) -> dict:
    import yaml

    from edge_inspector.cli import main as cli
    from edge_inspector.model.presets import load_preset

    data = Path(args.data)
    tag = f"{data.name}_{Path(args.config).stem}_{attention}"
    bundle, eval_dir = Path(args.work) / f"{tag}.bundle", Path(args.work) / f"{tag}.eval"
    overrides = [f"model.attention={attention}", *args.overrides]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    train_argv = ["train", "--data", str(data), "--config", args.config, "--out", str(bundle), *overrides]
    if args.max_train:
        train_argv += ["--max-images", str(args.max_train)]
    if args.resume:
        train_argv.append("--resume")
    eval_argv = ["eval", "--model", str(bundle), "--data", str(data), "--out", str(eval_dir),
                 "--threads", str(args.threads)]
    # The preset as resolved now (built-in presets can change between commits): the record must say what ran.
    resolved = load_preset(args.config, overrides).model_dump(mode="json")
    load_at_start = " ".join(f"{v:.1f}" for v in os.getloadavg())
    start = time.perf_counter()
    if cli(train_argv) != 0:
        raise SystemExit(f"training failed: edge-inspector {shlex.join(train_argv)}")
    train_wall = time.perf_counter() - start
    if cli(eval_argv) != 0:
        raise SystemExit(f"evaluation failed: edge-inspector {shlex.join(eval_argv)}")
    result = json.loads((eval_dir / "result.json").read_text())
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    overall = result["metrics"]["overall"]
    heads, head_commands = ({}, []) if args.no_heads else every_head(args, tag, bundle)
    record = new_record(script_command(), "torch", "onnxruntime", **{
        "benchmark": "accuracy",
        "commands": [f"edge-inspector {shlex.join(train_argv)}", f"edge-inspector {shlex.join(eval_argv)}",
                     *head_commands],
        "dataset": data.name,
        "dataset_path": str(data),
        "model": f"{Path(args.config).stem} ({attention})",
        "preset": args.config,
        "attention": attention,
        "overrides": overrides,
        "preset_resolved": resolved,
        "subset": {"max_train_images": args.max_train} if args.max_train else None,
        "image_size": result["image_size"],
        "engine": result["engine"],
        "image_auroc": overall["image_auroc"],
        "pixel_auroc": overall["pixel_auroc"],
        "aupro": overall["aupro"],
        "image_auroc_by_aggregation": {k: overall[f"image_auroc_{k}"] for k in ("mean", "max", "topk")},
        "score_aggregation": result["aggregation"],
        "head": manifest["score"]["head"],
        "head_probe": manifest["score"].get("head_probe", {}),
        "heads_on_test": heads,
        "image_f1_at_threshold": overall.get("image_f1"),
        "image_f1_best": overall.get("image_f1_best"),
        "per_defect_type": {k: v for k, v in result["metrics"].items() if k != "overall"},
        "training": {**(manifest.get("training") or {}), "wall_s_including_export": train_wall},
        "thresholds": manifest["thresholds"],
        "latency_ms_per_image": result["latency_ms"],
        "inference_threads": args.threads or "all",
        "bars": {k: {"min": v, "value": overall[k], "met": overall[k] >= v} for k, v in BARS.items()},
        "model_id": manifest["model_id"],
    })
    record["machine"]["load_average_at_start"] = load_at_start
    write_record(RESULTS, f"accuracy_{tag}{'_subset' if args.max_train else ''}", record)
    return record


def _row(r: dict) -> str:
    train = r.get("training") or {}
    lat = r.get("latency_ms_per_image") or {}
    subset = r.get("subset")
    scope = f"subset: {subset['max_train_images']} train imgs" if subset else "full"
    by = r.get("image_auroc_by_aggregation", {})
    nan = float("nan")
    heads = r.get("heads_on_test") or {}
    per_head = " · ".join(f"{h[:5]} {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}" for h, v in heads.items()) or "-"
    return (f"| {r['date'][:16].replace('T', ' ')} | {r['dataset']} | {r['model']} | "
            f"{scope}, {train.get('epochs', '?')} ep | {r.get('head', 'reconstruction')} | "
            f"**{r['image_auroc']:.3f}** | **{r['pixel_auroc']:.3f}** | "
            f"{r['aupro']:.3f} | {by.get('mean', nan):.3f} / {by.get('max', nan):.3f} / {by.get('topk', nan):.3f} | "
            f"{per_head} | {train.get('duration_s') or 0:.0f} s | {lat.get('mean', float('nan')):.0f} ms |")


def update_readme() -> None:
    """Rebuild the accuracy table: the newest result per (dataset, model, scope), newest first."""
    latest: dict[tuple, dict] = {}
    for path in sorted(RESULTS.glob("accuracy_*.json")):
        record = json.loads(path.read_text())
        key = (record["dataset"], record["model"], bool(record.get("subset")))
        if key not in latest or record["date"] > latest[key]["date"]:
            latest[key] = record
    rows = sorted(latest.values(), key=lambda r: (bool(r.get("subset")), r["dataset"], r["model"]))
    table = "\n".join([
        "| date (UTC) | dataset | model | scope | head shipped | image AUROC | pixel AUROC | AUPRO "
        "| image AUROC mean / max / top-k | every head: image / pixel AUROC | training time | latency (ORT) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
    ])
    text = README.read_text() if README.exists() else ""
    if TABLE_START not in text:
        raise SystemExit(f"{README} lacks the {TABLE_START} ... {TABLE_END} markers")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/magnetic_tile", help="MVTec-layout category folder")
    parser.add_argument("--config", default="haloae-lite", help="preset name or YAML path")
    parser.add_argument("--attention", nargs="+", default=["halo", "block_mean"], choices=["halo", "block_mean"])
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N train/good images")
    parser.add_argument("--threads", type=int, default=0, help="torch / ORT threads (0 = every core)")
    parser.add_argument("--work", default=str(HERE / "work"), help="bundles and eval output (git-ignored)")
    parser.add_argument("--resume", action="store_true", help="resume interrupted training runs")
    parser.add_argument("--readme-only", action="store_true", help="only rebuild the README table")
    parser.add_argument("--no-heads", action="store_true",
                        help="skip re-exporting the trained model with every scoring head")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides, e.g. train.epochs=2")
    args = parser.parse_args()
    if not args.readme_only:
        for attention in args.attention:
            record = run_variant(args, attention)
            print(f"{record['model']}: image AUROC {record['image_auroc']:.3f}, "
                  f"pixel AUROC {record['pixel_auroc']:.3f}, AUPRO {record['aupro']:.3f}")
    update_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
