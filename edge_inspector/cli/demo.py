"""``edge-inspector demo``: the built-in demo line judged by the bundled demo model, one line per part and a summary.

Ends after a fixed number of parts. Publishes over MQTT when a broker answers at ``--mqtt`` (default
mqtt://127.0.0.1:1883); otherwise prints only, and spools nothing. ``--write-dataset DIR`` writes demo parts in
MVTec layout (for training a demo model) instead of running the line.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from edge_inspector.cli import log_settings
from edge_inspector.config import load_run_config

DEFAULT_PARTS = 24
DEFAULT_HTTP_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", type=int, default=DEFAULT_PARTS, help=f"parts on the line (default {DEFAULT_PARTS})")
    parser.add_argument("--model", default="demo", help="model bundle folder (default: demo, the bundled demo model)")
    parser.add_argument("--texture", default="gravel", choices=("brick", "grass", "gravel"), help="product surface")
    parser.add_argument("--defect-rate", type=float, default=0.3, help="share of defective parts (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the line (same seed, same parts)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between parts (0 = as fast as judged)")
    parser.add_argument("--mqtt", metavar="URL", default="mqtt://127.0.0.1:1883", help="publish here if reachable")
    parser.add_argument("--show", action="store_true", help="open a local preview window")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                        help=f"serve the web dashboard here while the demo runs (default {DEFAULT_HTTP_PORT}, the "
                             "next free port if taken; 0 = off)")
    parser.add_argument("--write-dataset", metavar="DIR", help="write demo parts in MVTec layout to DIR and exit")
    parser.add_argument("--train-good", type=int, default=200, help="good training images for --write-dataset")
    parser.add_argument("--test-good", type=int, default=40, help="good test images for --write-dataset")
    parser.add_argument("--test-defects", type=int, default=20,
                        help="test images of each defect kind for --write-dataset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any line configuration key")


def broker_reachable(url: str, timeout_s: float = 0.5) -> bool:
    """A quick TCP probe, so the demo never spools results for a broker that is not there."""
    from edge_inspector.publish.broker import parse_broker_url

    address = parse_broker_url(url)
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def dashboard_port(wanted: int) -> int:
    """``wanted`` when it is free on 127.0.0.1, else a free port the system picks (0 stays 0: no dashboard)."""
    if wanted == 0:
        return 0
    for port in (wanted, 0):
        try:
            with socket.create_server(("127.0.0.1", port)) as probe:
                return probe.getsockname()[1]
        except OSError:
            continue
    return 0


def summarize(results: list) -> dict[str, Any]:
    """Counts, and accuracy against the demo line's ground truth."""
    verdicts = [r.verdict.value for r in results]
    labelled = [r for r in results if r.ground_truth is not None]
    correct = sum((r.verdict.value != "PASS") == r.ground_truth for r in labelled)
    missed = sum(r.ground_truth and r.verdict.value == "PASS" for r in labelled)
    false_rejects = sum((not r.ground_truth) and r.verdict.value != "PASS" for r in labelled)
    return {"parts": len(results), "pass": verdicts.count("PASS"), "fail": verdicts.count("FAIL"),
            "unknown": verdicts.count("UNKNOWN"), "accuracy": round(correct / len(labelled), 4) if labelled else None,
            "missed_defects": missed, "false_rejects": false_rejects}


def main(args: argparse.Namespace) -> int:
    from edge_inspector.capture.demo_line import DemoLine, write_demo_dataset
    from edge_inspector.cli.run import run_line
    from edge_inspector.pipeline.line import resolve_model
    from edge_inspector.pipeline.sinks import CollectingSink

    if args.write_dataset:
        folder = write_demo_dataset(args.write_dataset, train_good=args.train_good, test_good=args.test_good,
                                    test_defect_each=args.test_defects, texture=args.texture, seed=args.seed)
        print(f"demo dataset written to {folder}")
        return 0
    reachable = broker_reachable(args.mqtt)
    # An unreachable broker switches publishing off (no spool for a demo); mqtt.enabled=false is still honoured.
    explicit = {"model": args.model, "source": "demo", "show": args.show, "station": "demo",
                "mqtt": {"url": args.mqtt, **({} if reachable else {"enabled": False})}, "archive": {"enabled": False},
                "http": {"port": dashboard_port(args.http_port)}}
    config = load_run_config(None, args.overrides, explicit)
    log_settings(args, config.logging.level, config.logging.json_lines)
    if config.mqtt.enabled:
        destination = f"publishing to {args.mqtt}"
    else:
        destination = "MQTT off, printing only" if reachable else f"no MQTT broker at {args.mqtt}, printing only"
    print(f"demo line: {args.parts} parts of {args.texture}, model {resolve_model(config.model)}; {destination}")
    line = DemoLine(config.capture, parts=args.parts, defect_rate=args.defect_rate, texture=args.texture,
                    seed=args.seed, interval_s=args.interval)
    collector = CollectingSink()
    stats = run_line(config, source=line, extra_sinks=[collector])
    summary = summarize(collector.results)
    latency = stats["latency_ms"].get("total", {})
    summary["latency_p50_ms"] = round(latency.get("p50", 0.0), 2)
    print("summary: " + json.dumps(summary))
    if summary["parts"] < args.parts and not stats["counts"].get("errors"):
        print("demo ended early", file=sys.stderr)
        return 1
    return 0
