"""The composition root of a line: one ``RunConfig`` in, a wired loop out.

``build_line`` opens the model bundle and its engine, makes the frame source, the sinks (MQTT publisher, frame
archive, the caller's own, the newest-result holder) and the loop, and hands the publisher the line's command
handler and heartbeat. ``Line.run`` runs it to its end. Operational extras that need the built loop (the ops HTTP
server) are started by ``Line.run`` as services the caller passes in: pipeline does not import ops.

A remote command's way: paho's network thread -> ``publish.commands.parse_command`` -> ``Line.apply_command`` ->
``InspectionLoop.apply_command`` (the ``publish.commands.COMMANDS`` table names the loop method) -> the response,
after the retained status has been updated when the command changed the line's settings.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, Sequence

import cv2

from edge_inspector.bundle.store import load_bundle
from edge_inspector.capture.frame import Source
from edge_inspector.capture.sources import open_source
from edge_inspector.config import RunConfig
from edge_inspector.engines.base import Engine
from edge_inspector.engines.select import open_engine
from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.pipeline.heap import settle_heap
from edge_inspector.pipeline.loop import InspectionLoop
from edge_inspector.pipeline.sinks import LatestResult
from edge_inspector.publish.archive import Archive
from edge_inspector.publish.commands import Command
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.results import Sink

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something that runs beside the line while it runs (e.g. ``ops.http.OpsServer``)."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...


def display_available() -> tuple[bool, str]:
    """Whether a preview window can open here, and why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return True, ""


DEMO_MODEL = "demo"
"""The ``model`` value that names the bundled demo model (package data: ``edge_inspector/demo_model``)."""


def demo_model_dir() -> Path:
    """The bundled demo model's folder, wherever the package is installed (a wheel carries it as package data)."""
    return Path(str(resources.files("edge_inspector").joinpath("demo_model")))


def resolve_model(spec: str | None) -> Path:
    """The bundle folder ``model`` names: 'demo' is the bundled demo model, anything else a folder path.

    Raises:
        ConfigError: no model was given.
    """
    if not spec:
        raise ConfigError("model: no model bundle given; set 'model:' in line.yaml or pass --model <bundle folder> "
                          "(edge-inspector init writes a line.yaml; edge-inspector demo tries the demo model)")
    return demo_model_dir() if spec == DEMO_MODEL else Path(spec).expanduser()


def is_demo_model(spec: str | None) -> bool:
    """Whether ``spec`` names the bundled demo model (by name or by its folder)."""
    if not spec:
        return False
    return spec == DEMO_MODEL or Path(spec).expanduser().resolve() == demo_model_dir().resolve()


@dataclass
class Line:
    """A built line: the loop and what it was wired with.

    Attributes:
        loop: the inspection loop (not started).
        engine: the opened engine; ``run`` closes it.
        publisher: the MQTT publisher (also one of the loop's sinks), or None when MQTT is off.
        latest: the newest-result holder (one of the loop's sinks) when a preview window or the ops HTTP server
            will show it, else None.
        station: the station name.
        show: open a local preview window while running.
    """

    loop: InspectionLoop
    engine: Engine
    publisher: ResultPublisher | None
    latest: LatestResult | None
    station: str
    show: bool = False
    _stop_requested: threading.Event = field(default_factory=threading.Event)

    def request_stop(self) -> None:
        """Ask ``run`` to end as Ctrl-C does: stop reading, judge what was captured, close the sinks. Safe to call
        from a signal handler or another thread; returns at once."""
        self._stop_requested.set()

    def apply_command(self, command: Command) -> dict:
        """The publisher's command handler: apply ``command`` to the loop; republish the status if it changed."""
        answer = self.loop.apply_command(command)
        if command.changes_settings and self.publisher is not None:
            # the retained status tells late subscribers what the line now does
            self.publisher.set_status(paused=answer["paused"], threshold=answer["effective_threshold"])
        return answer

    def heartbeat(self) -> dict:
        """The line's part of each MQTT heartbeat."""
        snap = self.loop.snapshot()
        return {"counts": snap["counts"], "paused": snap["paused"], "camera": snap["source"]}

    def run(self, services: Sequence[Service] = ()) -> dict:
        """Run until the source ends, ``capture.max_frames``, ``request_stop`` (SIGINT, SIGTERM) or 'q' in the
        preview window.

        Starts the publisher (an unreachable broker is logged and results are spooled meanwhile), the loop, then
        ``services`` (they see a running loop); at the end stops the loop (which judges what was captured and
        closes its sinks), the services and the engine.

        Returns:
            The loop's stats snapshot (``InspectionLoop.snapshot``).
        """
        if self.publisher is not None:
            self.publisher.start()
        try:
            self.loop.start()
        except BaseException:
            if self.publisher is not None:
                self.publisher.stop(drain_timeout=0)  # the loop never ran, so it will not close its sinks
            raise
        started: list[Service] = []
        try:
            for service in services:
                service.start()
                started.append(service)
            self._wait()
        finally:
            self.loop.stop()
            for service in reversed(started):
                service.stop()
            self.engine.close()
            if self.show:
                cv2.destroyAllWindows()
        stats = self.loop.snapshot()
        log.info("line stopped", extra=kv(**stats["counts"]))
        return stats

    def _wait(self) -> None:
        """Wait for the loop's end; with a preview window, draw the newest picture meanwhile (GUI calls belong to
        the main thread)."""
        preview = self.latest if self.show else None
        while not self.loop.wait(0.03 if preview else 0.2) and not self._stop_requested.is_set():
            if preview is not None and preview.image is not None:
                cv2.imshow(f"edge-inspector {self.station}", preview.image)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break


def build_line(config: RunConfig, *, source: Source | None = None, sinks: Sequence[Sink] = ()) -> Line:
    """Open and wire everything ``config`` names; nothing runs until ``Line.run``.

    Sinks get each result in this order: the MQTT publisher (it assigns the sequence number; with MQTT off it
    only does that, when the archive is on), the archive, ``sinks``, the newest-result holder.

    Args:
        config: the line configuration.
        source: an unopened source to use instead of ``config.source`` (the demo passes its own line).
        sinks: more result consumers (console printer, a collector for a summary, ...).

    Raises:
        BundleError, EngineError, ConfigError, SourceError, SpoolError: something named in ``config`` cannot be
            opened (the message says what).
    """
    if source is None and not config.source:
        raise ConfigError("source: no frame source given; set 'source:' in line.yaml or pass --camera N / --source "
                          "<video, rtsp:// URL or image folder> (edge-inspector init writes a line.yaml)")
    settle_heap()  # before the engine and the threads allocate: flat memory on a line that runs for weeks
    bundle = load_bundle(resolve_model(config.model))
    engine = open_engine(bundle, config.engine)
    source = source or open_source(config.source, config.capture)
    show = config.show
    if show:
        show, why = display_available()
        if not show:
            print(f"--show: {why}; running without a preview window", file=sys.stderr)
    # With MQTT off the publisher still numbers results (the archive names and stamps them by sequence number).
    numbering = None
    if config.mqtt.enabled or config.archive.enabled:
        numbering = ResultPublisher(config.mqtt, config.station, model_id=bundle.manifest.model_id)
    publisher = numbering if config.mqtt.enabled else None
    archive = Archive(config.archive, config.station) if config.archive.enabled else None
    # The newest result is kept, and every part drawn, when something shows it: the window or /preview.jpg.
    latest = LatestResult() if show or config.http.port else None
    line_sinks = [sink for sink in (numbering, archive) if sink is not None] + list(sinks)
    line_sinks += [latest] if latest is not None else []
    overlay = "all" if latest is not None else ("fail" if archive is not None else "none")
    loop = InspectionLoop(source, engine, bundle.manifest, line_sinks, capture=config.capture,
                          decision=config.decision, roi=config.roi, station=config.station, overlay=overlay)
    line = Line(loop, engine, publisher, latest, config.station, show)
    if publisher is not None:
        publisher.on_command = line.apply_command
        publisher.heartbeat_extra = line.heartbeat
    return line
