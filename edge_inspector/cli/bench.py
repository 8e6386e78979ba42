"""``edge-inspector bench``: inference latency of one or more bundles on every engine available here, side by side.

For each bundle, each engine (ONNX Runtime on the CPU always, per ``--threads`` setting; TensorRT when
``engines.select`` finds a plan that matches this GPU) is warmed up, then timed on the bundle's calibration images.
Timed runs are spread over ``--rounds`` rounds that visit every configuration in turn, so a change of load on a
shared machine hits all of them alike. Ratios compare each row with the first bundle on the same engine and threads.

    edge-inspector bench --model models/demo
    edge-inspector bench --model fp32.bundle --models w8a8.bundle --threads 1 2 --runs 200 --json bench.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_inspector.ops.records import machine

BACKENDS = ("onnxruntime", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model bundle folder (the reference for the ratios)")
    parser.add_argument("--models", nargs="+", default=[], metavar="BUNDLE", help="more bundles, compared with --model")
    parser.add_argument("--runs", type=int, default=100, help="timed inferences per configuration (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the timed runs are spread over (default 5)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], metavar="N",
                        help="ONNX Runtime intra-op threads to try (0 = one per core; default 0)")
    parser.add_argument("--spin-wait", action="store_true",
                        help="ONNX Runtime threads spin between operators (engine.spin_wait; default: they sleep)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="engines to try (default: both; TensorRT rows say why when it cannot run here)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (command, date, machine, rows)")


@dataclass
class Row:
    """One bundle on one engine configuration."""

    model_id: str
    bundle: str
    backend: str
    threads: int | None
    """ONNX Runtime intra-op threads (0 = one per core); None for TensorRT."""
    precision: str
    weight_bytes: int
    skipped: str | None = None
    """Why this configuration did not run (e.g. no TensorRT plan for this GPU)."""
    engine: dict[str, str] = field(default_factory=dict)
    n: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    fps: float | None = None
    speedup_vs_first: float | None = None
    """First bundle's p50 / this p50 on the same engine and threads (> 1: faster)."""
    weight_ratio_vs_first: float | None = None
    samples: list[float] = field(default_factory=list, repr=False)


def weight_bytes(bundle) -> int:
    """Bytes of the graph's stored tensors (INT4 packed two per byte); the manifest's figure when it has one."""
    import onnx

    from edge_inspector.bundle.graph_size import initializer_bytes

    if bundle.manifest.quantization.weight_bytes is not None:
        return bundle.manifest.quantization.weight_bytes
    return initializer_bytes(onnx.load(str(bundle.onnx_path), load_external_data=False))


def precision(manifest) -> str:
    """'fp32', or 'qdq' with the bit plan's mix, e.g. 'qdq w8a8x12 w4a8x3 keepx2'."""
    quant = manifest.quantization
    if quant.precision != "qdq" or not quant.bit_plan:
        return quant.precision
    mix = {choice: list(quant.bit_plan.values()).count(choice) for choice in sorted(set(quant.bit_plan.values()))}
    return "qdq " + " ".join(f"{choice}x{count}" for choice, count in mix.items())


def bench_images(bundle, count: int = 8) -> tuple[np.ndarray, str]:
    """The bundle's calibration images, or seeded noise (and a note) when it ships none."""
    images = bundle.calibration_images()
    if len(images):
        return images, f"{len(images)} calibration images"
    spec = bundle.manifest.input
    noise = np.random.default_rng(0).integers(0, 256, (count, spec.height, spec.width, 3), dtype=np.uint8)
    return noise, f"{count} random images (the bundle ships no calibration images)"


def open_rows(bundles: list, args: argparse.Namespace) -> list[tuple[Row, Any, np.ndarray]]:
    """Every (bundle, engine configuration): its row and, when it runs here, the opened engine and its images."""
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.select import open_engine
    from edge_inspector.errors import EdgeInspectorError

    opened = []
    for bundle in bundles:
        images, _ = bench_images(bundle)
        common = {"model_id": bundle.manifest.model_id, "bundle": str(bundle.path),
                  "precision": precision(bundle.manifest), "weight_bytes": weight_bytes(bundle)}
        for backend in args.backends:
            for threads in (args.threads if backend == "onnxruntime" else [None]):
                row = Row(backend=backend, threads=threads, **common)
                settings = EngineSettings(backend=backend, intra_op_threads=threads or 0, warmup_runs=args.warmup,
                                          spin_wait=args.spin_wait)
                try:
                    engine = open_engine(bundle, settings)  # warms up too
                except EdgeInspectorError as exc:  # e.g. TensorRT not installed, no plan for this GPU
                    row.skipped = str(exc)
                    engine = None
                else:
                    row.engine = engine.describe()
                opened.append((row, engine, images))
    return opened


def time_rows(opened: list[tuple[Row, Any, np.ndarray]], runs: int, rounds: int) -> None:
    """Timed inferences, round-robin over the configurations; fills each row's samples and summary."""
    from tqdm import tqdm

    active = [(row, engine, images) for row, engine, images in opened if engine is not None]
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    with tqdm(total=runs * len(active), desc="bench", unit="inference", disable=None, file=sys.stderr) as progress:
        for count in per_round:
            for row, engine, images in active:
                for _ in range(count):
                    image = images[len(row.samples) % len(images)]
                    start = time.perf_counter()
                    engine.infer(image)
                    row.samples.append((time.perf_counter() - start) * 1e3)
                progress.update(count)
    for row, _, _ in active:
        values = np.array(row.samples)
        row.n, row.mean_ms = int(values.size), float(values.mean())
        row.p50_ms, row.p99_ms = float(np.percentile(values, 50)), float(np.percentile(values, 99))
        row.fps = 1e3 / row.mean_ms


def add_ratios(rows: list[Row]) -> None:
    """Speed and size of each row against the first bundle on the same engine and threads."""
    first = rows[0].bundle if rows else None
    reference = {(r.backend, r.threads): r for r in rows if r.bundle == first}
    for row in rows:
        ref = reference.get((row.backend, row.threads))
        if ref is None or ref.p50_ms is None or row.p50_ms is None:
            continue
        row.speedup_vs_first = ref.p50_ms / row.p50_ms
        row.weight_ratio_vs_first = row.weight_bytes / ref.weight_bytes if ref.weight_bytes else None


def size_text(n_bytes: int) -> str:
    """12 B, 3.4 KiB, 7.1 MiB."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    return f"{n_bytes / 1024:.1f} KiB" if n_bytes < 1024 ** 2 else f"{n_bytes / 1024 ** 2:.1f} MiB"


HEADER = ("model", "engine", "precision", "weights", "mean ms", "p50 ms", "p99 ms", "fps", "speed x", "size x")


def format_table(rows: list[Row]) -> str:
    """A fixed-width table, one line per bundle x engine configuration; a skipped one says why."""
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = []
    for row in rows:
        engine = row.backend if row.threads is None else f"{row.backend} threads={row.threads or 'auto'}"
        cells = [row.model_id, engine, row.precision, size_text(row.weight_bytes)]
        if row.skipped:
            lines.append((cells, f"skipped: {row.skipped}"))
        else:
            lines.append((cells + [f"{row.mean_ms:.2f}", f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", f"{row.fps:.1f}",
                                   ratio(row.speedup_vs_first), ratio(row.weight_ratio_vs_first)], ""))
    widths = [max([len(title)] + [len(cells[i]) for cells, _ in lines if i < len(cells)])
              for i, title in enumerate(HEADER)]
    out = []
    for cells, note in [(list(HEADER), "")] + lines:
        out.append(("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + note).rstrip())
    return "\n".join(out)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (recorded in the JSON)."""
    parts = ["edge-inspector bench", f"--model {args.model}"]
    if args.models:
        parts.append("--models " + " ".join(args.models))
    parts += [f"--runs {args.runs}", f"--warmup {args.warmup}", f"--rounds {args.rounds}",
              "--threads " + " ".join(map(str, args.threads)), "--backends " + " ".join(args.backends)]
    if args.spin_wait:
        parts.append("--spin-wait")
    return " ".join(parts + ([f"--json {args.json}"] if args.json else []))


def main(args: argparse.Namespace) -> int:
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.errors import ConfigError
    from edge_inspector.pipeline.line import resolve_model

    if args.runs < 1 or args.rounds < 1 or args.warmup < 0:
        raise ConfigError(f"--runs and --rounds must be at least 1 and --warmup at least 0 "
                          f"(got runs={args.runs} rounds={args.rounds} warmup={args.warmup})")
    if any(threads < 0 for threads in args.threads):
        raise ConfigError(f"--threads takes 0 (one per core) or more, got {args.threads}")
    bundles = [load_bundle(resolve_model(path)) for path in [args.model, *args.models]]
    opened = open_rows(bundles, args)
    try:
        time_rows(opened, args.runs, args.rounds)
    finally:
        for _, engine, _ in opened:
            if engine is not None:
                engine.close()
    rows = [row for row, _, _ in opened]
    add_ratios(rows)
    images = [f"{bundle.manifest.model_id}: {bench_images(bundle)[1]}" for bundle in bundles]
    print(format_table(rows))
    print("images: " + "; ".join(images))
    if args.json:
        doc = {"command": command_line(args), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine("onnxruntime"), "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds,
               "images": images, "rows": [{k: v for k, v in asdict(row).items() if k != "samples"} for row in rows]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if any(row.skipped is None for row in rows) else 1
