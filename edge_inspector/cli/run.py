"""``edge-inspector run`` (and the bare ``edge-inspector --camera 0``): run the line from a camera or another source.

Precedence: defaults < ``--config`` YAML < ``key=value`` overrides < explicit flags. Starting without a reachable
broker is fine: results are spooled and sent when it comes back. SIGINT and SIGTERM stop the line in order: no new
frames, every captured part judged and published, a summary, a clean ``offline`` status; a second signal aborts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any, Iterator

from edge_inspector.cli import EXIT_ALL_FAIL_SAFE, EXIT_FAILED, EXIT_OK, log_settings
from edge_inspector.config import RunConfig, load_run_config
from edge_inspector.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--camera", type=int, metavar="N", help="camera index for OpenCV (0 = first camera)")
    where.add_argument("--source", help="video file, rtsp:// URL or image folder")
    parser.add_argument("--model", help="model bundle folder")
    parser.add_argument("--config", help="line configuration YAML (edge-inspector init writes one)")
    parser.add_argument("--mqtt", metavar="URL", help="MQTT broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host:8883")
    parser.add_argument("--station", help="station name used in topics and part ids")
    parser.add_argument("--show", action="store_true", default=None, help="open a local preview window")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N judged parts (0 = no limit)")
    parser.add_argument("--quiet", action="store_true", help="do not print a line per part")
    parser.add_argument("--allow-demo", action="store_true",
                        help="run with the synthetic demo source or the demo model (edge-inspector demo does this)")
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


def refuse_demo(config: RunConfig) -> None:
    """A real line must not judge synthetic parts or use the demo model by accident (a generated config that was
    never edited): both need ``--allow-demo``.

    Raises:
        ConfigError: ``config`` names the demo source or the demo model.
    """
    from edge_inspector.pipeline.line import is_demo_model

    demo = [f"source: {config.source}"] if config.source == "demo" else []
    demo += [f"model: {config.model}"] if is_demo_model(config.model) else []
    if demo:
        where = f"and publish the verdicts to {config.mqtt.url}" if config.mqtt.enabled else "(MQTT off)"
        raise ConfigError(
            f"this is the demo setup ({', '.join(demo)}): the line would judge synthetic parts {where}. To try the "
            "product run 'edge-inspector demo'; for a real line set source and model (edge-inspector init writes "
            "a line.yaml); to run the demo setup as a line anyway add --allow-demo")


@contextlib.contextmanager
def stop_on_signals(stop: Any) -> Iterator[dict[str, int | None]]:
    """While inside, SIGINT and SIGTERM call ``stop()`` (an orderly stop) and a second one raises
    KeyboardInterrupt; yields ``{"signal": number of the first one or None}``. Only the main thread can handle
    signals: elsewhere (tests running a line on a thread) nothing is installed."""
    received: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum: int, frame: Any) -> None:
        if received["signal"] is not None:
            raise KeyboardInterrupt
        received["signal"] = signum
        print(f"{signal.Signals(signum).name}: stopping (judging the parts already captured)", file=sys.stderr)
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_line(config: RunConfig, source=None, quiet: bool = False, extra_sinks: list | None = None) -> dict:
    """The line as ``edge-inspector run`` runs it: built from ``config``, a line per part on the console, the ops
    HTTP server beside it when ``http.port`` is set, systemd notifications under systemd; returns the loop's stats
    at the end (source ended, ``max_frames``, SIGINT or SIGTERM), with ``signal`` (the stopping signal or None)
    and ``fail_safe`` (a ``FailSafeWatch``).

    Args:
        source: an unopened source to use instead of ``config.source`` (the demo passes its own line).
        extra_sinks: more result consumers (e.g. a collector for a summary).
    """
    from edge_inspector.ops.dashboard import RecentResults
    from edge_inspector.ops.http import OpsServer
    from edge_inspector.ops.metrics import LatencyHistograms
    from edge_inspector.ops.systemd import SystemdNotifier
    from edge_inspector.pipeline.line import build_line
    from edge_inspector.pipeline.sinks import ConsoleSink, FailSafeWatch

    watch = FailSafeWatch()
    web = (RecentResults(), LatencyHistograms()) if config.http.port else ()  # the dashboard's and /metrics' sinks
    sinks = ([] if quiet else [ConsoleSink()]) + list(extra_sinks or []) + [watch, *web]
    line = build_line(config, source=source, sinks=sinks)
    services: list = [SystemdNotifier(line.loop)]
    if config.http.port:  # the dashboard, /metrics, /readyz: the ops package watches the built line
        services.append(OpsServer(line.loop, line.latest, line.publisher, config.http.host, config.http.port,
                                  recent=web[0], histograms=web[1], control=line.apply_command,
                                  station=config.station, token_env=config.http.token_env))
        print(f"dashboard: http://{config.http.host}:{config.http.port}/", file=sys.stderr)
    with stop_on_signals(line.request_stop) as stopped_by:
        stats = line.run(services)
    return {**stats, "signal": stopped_by["signal"], "fail_safe": watch}


def exit_code(stats: dict) -> int:
    """Print the run's summary and errors; the exit code (see ``edge_inspector.cli``)."""
    counts = stats["counts"]
    summary = {key: counts.get(name, 0) for key, name in (("judged", "judged"), ("pass", "PASS"), ("fail", "FAIL"),
               ("unknown", "UNKNOWN"), ("dropped", "dropped"), ("errors", "errors"))}
    print(json.dumps(summary), file=sys.stderr)
    watch = stats["fail_safe"]
    if stats["failure"]:
        print(f"error: the line stopped: {stats['failure']}", file=sys.stderr)
        return EXIT_FAILED
    if watch.all_fail_safe:
        print(f"error: every judged part ({watch.judged}) got the fail-safe verdict, so none was really inspected; "
              f"first reason: {watch.first_error}", file=sys.stderr)
        return EXIT_ALL_FAIL_SAFE
    if stats["signal"] is not None:
        return 128 + stats["signal"]
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, args.overrides, explicit_flags(args))
    log_settings(args, config.logging.level, config.logging.json_lines)
    if not args.allow_demo:
        refuse_demo(config)
    return exit_code(run_line(config, quiet=args.quiet))
