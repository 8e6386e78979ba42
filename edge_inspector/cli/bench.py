"""``edge-inspector bench``: inference latency of one or more bundles on every engine available here, side by side.

Per engine setting (engine x threads), every bundle runs once per cycle, in a rotating order (``ops.bench``); p50/p99
over the cycles, and ratios to the first bundle on the same setting as medians of same-cycle ratios.

    edge-inspector bench --model edge_inspector/demo_model
    edge-inspector bench --model fp32.bundle --models w8a8.bundle --threads 1 2 --runs 200 --json bench.json
"""

from __future__ import annotations

import argparse

from edge_inspector.ops.bench import BACKENDS, BenchOptions  # light: engines load in bench()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model bundle folder (the reference for the ratios)")
    parser.add_argument("--models", nargs="+", default=[], metavar="BUNDLE", help="more bundles, compared with --model")
    parser.add_argument("--runs", type=int, default=100,
                        help="timed cycles per engine setting; each runs every bundle once (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inferences per configuration first (default 10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], metavar="N",
                        help="ONNX Runtime intra-op threads to try (0 = one per core; default 0)")
    parser.add_argument("--spin-wait", action="store_true",
                        help="ONNX Runtime threads spin between operators (engine.spin_wait; default: they sleep)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="engines to try (default: both; TensorRT rows say why when it cannot run here)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (command, date, machine, rows)")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (recorded in the JSON)."""
    parts = ["edge-inspector bench", f"--model {args.model}"]
    if args.models:
        parts.append("--models " + " ".join(args.models))
    parts += [f"--runs {args.runs}", f"--warmup {args.warmup}", "--threads " + " ".join(map(str, args.threads)),
              "--backends " + " ".join(args.backends)]
    if args.spin_wait:
        parts.append("--spin-wait")
    return " ".join(parts + ([f"--json {args.json}"] if args.json else []))


def main(args: argparse.Namespace) -> int:
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines.records import new_record, write_json
    from edge_inspector.ops.bench import bench
    from edge_inspector.pipeline.line import resolve_model

    options = BenchOptions(runs=args.runs, warmup=args.warmup, threads=tuple(args.threads),
                           spin_wait=args.spin_wait, backends=tuple(args.backends))
    options.check()
    result = bench([load_bundle(resolve_model(path)) for path in [args.model, *args.models]], options)
    print(result.table())
    print("images: " + "; ".join(result.images))
    if args.json:
        doc = new_record(command_line(args), "onnxruntime", runs=args.runs, warmup=args.warmup, timing="interleaved",
                         images=result.images, rows=[row.to_dict() for row in result.rows])
        print(f"results written to {write_json(args.json, doc)}")
    return 0 if any(row.skipped is None for row in result.rows) else 1
