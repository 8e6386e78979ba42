"""The line's web server: the operator dashboard and the operational endpoints, on a background thread.

Starlette (routing, responses) served by uvicorn (HTTP/1.1 over h11); neither imports torch, both run on a Jetson.

    /              the dashboard page (``ops/static/dashboard.html``): live picture, verdicts, counters, controls
    /stream.mjpg   the newest overlay as an MJPEG stream (multipart/x-mixed-replace; an <img> shows it live)
    /api/state     everything the page shows, as JSON (``dashboard.line_state``)
    /api/thumb/N   the thumbnail of the N-th verdict of this run (JPEG)
    /api/command   POST a command: the same JSON and validation as MQTT's ``cmd`` topic (``publish.commands``)
    /metrics       Prometheus exposition of the loop's live statistics and latency histograms
    /healthz       200 while the process answers
    /readyz        200 when the line can judge parts, else 503 with a JSON reason (see ``health.readiness``)
    /preview.jpg   the newest overlay as one JPEG; 404 before the first judged part

Reading needs no authentication; bind to 127.0.0.1 (the default ``http.host``) unless the network is trusted.
Writing (``/api/command``) needs ``Authorization: Bearer <token>`` with the token from the environment variable
``http.token_env`` (default ``EDGE_INSPECTOR_HTTP_TOKEN``); without that variable every write is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
import time
from importlib import resources
from typing import Any, Callable

import cv2
import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge_inspector.errors import ConfigError, EdgeInspectorError
from edge_inspector.log import kv
from edge_inspector.ops.dashboard import RecentResults, line_state
from edge_inspector.ops.health import readiness
from edge_inspector.ops.metrics import LatencyHistograms, LineCollector
from edge_inspector.pipeline.sinks import LatestResult
from edge_inspector.publish.commands import Command, parse_command

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
STREAM_POLL_S = 0.05
"""How often the MJPEG stream looks for a newer picture."""
MAX_COMMAND_BYTES = 4096
DEFAULT_TOKEN_ENV = "EDGE_INSPECTOR_HTTP_TOKEN"


def _jpeg(image) -> bytes | None:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return jpeg.tobytes() if ok else None


class OpsServer:
    """Serves the dashboard and the operational endpoints until ``stop()`` (a ``pipeline.line.Service``).

    Args:
        loop: the ``InspectionLoop`` to report on.
        latest: the ``LatestResult`` sink that the loop feeds.
        publisher: the MQTT ``ResultPublisher`` for broker and spool state, or None.
        host, port: where to listen; port 0 picks a free port (see ``port``).
        recent: the ``RecentResults`` sink the loop feeds (the dashboard's verdict list); None = an empty list.
        histograms: the ``LatencyHistograms`` sink the loop feeds, exported on /metrics; None = no histograms.
        control: applies a command to the line and returns the response document (``Line.apply_command``); None
            = the dashboard is read-only.
        station: shown on the page.
        token_env: environment variable holding the write token.
        stuck_after_s: see ``health.readiness``.
    """

    def __init__(self, loop: Any, latest: LatestResult, publisher: Any | None = None, host: str = "127.0.0.1",
                 port: int = 0, *, recent: RecentResults | None = None, histograms: LatencyHistograms | None = None,
                 control: Callable[[Command], dict] | None = None, station: str = "",
                 token_env: str = DEFAULT_TOKEN_ENV, stuck_after_s: float | None = None):
        self.loop, self.latest, self.publisher, self.host = loop, latest, publisher, host
        self.recent, self.control, self.station = recent or RecentResults(), control, station
        self.token_env, self.stuck_after_s = token_env, stuck_after_s
        self.registry = CollectorRegistry()
        self.registry.register(LineCollector(loop, publisher))
        if histograms is not None:
            self.registry.register(histograms.histogram)
        ProcessCollector(registry=self.registry)
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self.app = Starlette(routes=[
            Route("/", self._page), Route("/stream.mjpg", self._stream), Route("/api/state", self._state),
            Route("/api/thumb/{number:int}", self._thumb), Route("/api/command", self._command, methods=["POST"]),
            Route("/metrics", self._metrics), Route("/healthz", self._healthz), Route("/readyz", self._readyz),
            Route("/preview.jpg", self._preview),
        ], exception_handlers={404: self._not_found})

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1] if self._socket else self._requested_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> OpsServer:
        """Bind and serve on a daemon thread.

        Raises:
            ConfigError: the address cannot be bound (port in use, unknown host, no permission).
        """
        try:  # bound here, so a taken port is one clear error and port 0 is known at once
            self._socket = socket.create_server((self.host, self._requested_port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"http.host/http.port: cannot listen on {self.host}:{self._requested_port}: {exc}; "
                              "choose another http.port (0 = off)") from exc
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._stopping.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="ops-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("ops http server listening", extra=kv(url=self.url))
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # open MJPEG streams end, so the server can shut down
        self._server.should_exit = True
        self._thread.join(timeout=5.0)
        self._socket.close()
        self._server = self._socket = None
        log.info("ops http server stopped")

    # ------------------------------------------------------------------ the page and its data
    async def _page(self, request: Request) -> Response:
        page = resources.files("edge_inspector.ops").joinpath("static", "dashboard.html").read_text()
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def _state(self, request: Request) -> Response:
        state = line_state(self.loop, self.publisher, self.recent, self.station,
                           write_enabled=self.control is not None and bool(os.environ.get(self.token_env)))
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    async def _thumb(self, request: Request) -> Response:
        jpeg = self.recent.thumbnail(request.path_params["number"])
        if jpeg is None:
            return JSONResponse({"error": "no such thumbnail (only the latest verdicts are kept)"}, 404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def _stream(self, request: Request) -> Response:
        async def frames():
            shown = None
            while not self._stopping.is_set() and not await request.is_disconnected():
                image = self.latest.image
                if image is not None and image is not shown:
                    shown = image
                    jpeg = await asyncio.to_thread(_jpeg, image)
                    if jpeg is not None:
                        yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                               + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

    async def _command(self, request: Request) -> Response:
        refusal = self._refuse_write(request.headers.get("authorization", ""))
        if refusal is not None:
            return refusal
        body = await request.body()
        if len(body) > MAX_COMMAND_BYTES:
            return JSONResponse({"ok": False, "error": f"command larger than {MAX_COMMAND_BYTES} bytes"}, 413)
        try:
            command = parse_command(body)
            result = self.control(command)
        except (EdgeInspectorError, ValueError) as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, 400)
        log.warning("command from the dashboard", extra=kv(kind=command.kind, client=request.client.host))
        return JSONResponse({"ok": True, "kind": command.kind, "result": result})

    def _refuse_write(self, authorization: str) -> Response | None:
        """None when the request may write; else the 403/401 answer that says why not."""
        token = os.environ.get(self.token_env)
        if self.control is None or not token:
            why = "this line takes no commands" if self.control is None else f"set {self.token_env} to enable them"
            return JSONResponse({"ok": False, "error": f"write actions are off: {why}"}, 403)
        given = authorization.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"ok": False, "error": "missing or wrong token (Authorization: Bearer <token>)"},
                                401, headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        endpoints = [route.path for route in self.app.routes]
        return JSONResponse({"error": f"no such endpoint {request.url.path!r}", "endpoints": endpoints}, 404)

    # ------------------------------------------------------------------ operational endpoints
    async def _metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept"))  # text, or OpenMetrics if asked
        return Response(encoder(self.registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"alive": True, "uptime_s": round(time.monotonic() - self._started, 3)})

    async def _readyz(self, request: Request) -> Response:
        state = readiness(self.loop, self.latest, self._started, self.stuck_after_s, self.publisher)
        return JSONResponse(state.to_json(), 200 if state.ready else 503, headers={"Cache-Control": "no-store"})

    async def _preview(self, request: Request) -> Response:
        image = self.latest.image
        if image is None:
            return JSONResponse({"error": "no part judged yet"}, 404)
        jpeg = _jpeg(image)
        if jpeg is None:
            return JSONResponse({"error": f"JPEG encoding failed for an image of shape {image.shape}"}, 500)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
