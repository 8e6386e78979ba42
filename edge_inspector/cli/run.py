"""``edge-inspector run`` (and the bare ``edge-inspector --camera 0``): run the line from a camera or another source.

Precedence: defaults < ``--config`` YAML < ``key=value`` overrides < explicit flags. Starting without a reachable
broker is fine: results are spooled and sent when it comes back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge_inspector.config import RunConfig, load_run_config
from edge_inspector.log import kv

log = logging.getLogger(__name__)


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


def display_available() -> tuple[bool, str]:
    """Whether a preview window can open here, and why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return True, ""


def resolve_model(path: str) -> Path:
    """The bundle folder: as given, else relative to the repository (so ``models/demo`` works from anywhere)."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    beside_repo = Path(__file__).resolve().parents[2] / given
    return beside_repo if beside_repo.exists() else given


def run_line(config: RunConfig, source=None, quiet: bool = False, extra_sinks: list | None = None) -> dict:
    """Open everything the configuration names, run the loop to its end (or Ctrl-C) and return its stats.

    Args:
        source: an unopened source to use instead of ``config.source`` (the demo passes its own line).
        extra_sinks: more result consumers (e.g. a collector for a summary).
    """
    import cv2

    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.capture.sources import open_source
    from edge_inspector.engines.select import open_engine
    from edge_inspector.pipeline.loop import InspectionLoop
    from edge_inspector.pipeline.sinks import ArchiveSink, ConsoleSink, PreviewSink, PublisherSink
    from edge_inspector.publish.archive import Archive
    from edge_inspector.publish.mqtt import ResultPublisher

    bundle = load_bundle(resolve_model(config.model))
    engine = open_engine(bundle, config.engine)
    source = source or open_source(config.source, config.capture)
    show = config.show
    if show:
        show, why = display_available()
        if not show:
            print(f"--show: {why}; running without a preview window", file=sys.stderr)
    loop_holder: dict[str, Any] = {}

    def on_command(command) -> dict:
        answer = loop_holder["loop"].apply_command(command.kind, command.value, command.part_id)
        if command.kind != "trigger":  # the retained status tells late subscribers what the line now does
            publisher.set_status(paused=answer["paused"], threshold=answer["effective_threshold"])
        return answer

    def heartbeat() -> dict:
        snap = loop_holder["loop"].snapshot()
        return {"counts": snap["counts"], "paused": snap["paused"], "camera": snap["source"]}

    publisher = None
    if config.mqtt.enabled:
        publisher = ResultPublisher(config.mqtt, config.station, on_command, model_id=bundle.manifest.model_id,
                                    heartbeat_extra=heartbeat)
    preview = PreviewSink() if show else None
    sinks = [PublisherSink(publisher)] if publisher else []
    if config.archive.enabled:
        sinks.append(ArchiveSink(Archive(config.archive, config.station)))
    sinks += ([] if quiet else [ConsoleSink()]) + (extra_sinks or []) + ([preview] if preview else [])
    latest = None
    if config.http.port:  # /metrics, /readyz, /preview.jpg: the ops package watches the line through a sink
        from edge_inspector.ops.health import LatestResult
        from edge_inspector.ops.http import OpsServer

        latest = LatestResult()
        sinks.append(latest)
    overlay = "all" if show or config.http.port else ("fail" if config.archive.enabled else "none")
    loop = InspectionLoop(source, engine, bundle.manifest, sinks, capture=config.capture, decision=config.decision,
                          roi=config.roi, station=config.station, overlay=overlay)
    loop_holder["loop"] = loop
    ops = OpsServer(loop, latest, publisher, config.http.host, config.http.port).start() if latest else None
    if publisher:
        publisher.start()  # an unreachable broker is logged by the publisher, and results are spooled meanwhile
    try:
        loop.start()
    except BaseException:
        if publisher:
            publisher.stop(drain_timeout=0)
        if ops:
            ops.stop()
        raise
    try:
        while not loop.wait(0.03 if preview else 0.2):
            if preview and preview.latest is not None:
                cv2.imshow(f"edge-inspector {config.station}", preview.latest)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    finally:
        loop.stop()
        if ops:
            ops.stop()
        engine.close()
        if preview:
            cv2.destroyAllWindows()
    stats = loop.snapshot()
    log.info("line stopped", extra=kv(**stats["counts"]))
    return stats


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
