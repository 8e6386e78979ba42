"""``edge-inspector run`` (and the bare ``edge-inspector --camera 0``): run the line from a camera or another source.

Precedence: defaults < ``--config`` YAML < ``key=value`` overrides < explicit flags. Starting without a reachable
broker is fine: results are spooled and sent when it comes back.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_inspector.config import RunConfig, load_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--camera", type=int, metavar="N", help="camera index for OpenCV (0 = first camera)")
    where.add_argument("--source", help="video file, rtsp:// URL, image folder, or 'demo'")
    parser.add_argument("--model", help="model bundle folder (default: models/demo)")
    parser.add_argument("--config", help="line configuration YAML (see: edge-inspector config --defaults)")
    parser.add_argument("--mqtt", metavar="URL", help="MQTT broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host:8883")
    parser.add_argument("--station", help="station name used in topics and part ids")
    parser.add_argument("--show", action="store_true", default=None, help="open a local preview window")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N judged parts (0 = no limit)")
    parser.add_argument("--quiet", action="store_true", help="do not print a line per part")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="any configuration key, e.g. decision.sensitivity=0.6 capture.mode=free_run")


def explicit_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys given as flags (they win over the file and the overrides)."""
    explicit: dict[str, Any] = {}
    if args.camera is not None:
        explicit["source"] = str(args.camera)
    elif getattr(args, "source", None):
        explicit["source"] = args.source
    for key in ("model", "station", "show"):
        if getattr(args, key, None) is not None:
            explicit[key] = getattr(args, key)
    if args.mqtt:
        explicit["mqtt"] = {"url": args.mqtt, "enabled": True}
    if getattr(args, "max_frames", None) is not None:
        explicit["capture"] = {"max_frames": args.max_frames}
    return explicit


def run_line(config: RunConfig, source=None, quiet: bool = False, extra_sinks: list | None = None) -> dict:
    """The line as ``edge-inspector run`` runs it: built from ``config``, a line per part on the console, the ops
    HTTP server beside it when ``http.port`` is set; returns the loop's stats at the end (or Ctrl-C).

    Args:
        source: an unopened source to use instead of ``config.source`` (the demo passes its own line).
        extra_sinks: more result consumers (e.g. a collector for a summary).
    """
    from edge_inspector.ops.http import OpsServer
    from edge_inspector.pipeline.line import build_line
    from edge_inspector.pipeline.sinks import ConsoleSink

    line = build_line(config, source=source, sinks=([] if quiet else [ConsoleSink()]) + list(extra_sinks or []))
    services = []
    if config.http.port:  # /metrics, /readyz, /preview.jpg: the ops package watches the built line
        services.append(OpsServer(line.loop, line.latest, line.publisher, config.http.host, config.http.port))
    return line.run(services)


def main(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, args.overrides, explicit_flags(args))
    stats = run_line(config, quiet=args.quiet)
    counts = stats["counts"]
    summary = {key: counts.get(name, 0) for key, name in (("judged", "judged"), ("pass", "PASS"), ("fail", "FAIL"),
               ("unknown", "UNKNOWN"), ("dropped", "dropped"), ("errors", "errors"))}
    print(json.dumps(summary), file=sys.stderr)
    if stats["failure"]:
        print(f"error: the line stopped: {stats['failure']}", file=sys.stderr)
        return 1
    return 0
