"""A small HTTP server beside the line: /metrics, /healthz, /readyz and /preview.jpg, on a background thread.

    /metrics      Prometheus exposition of the loop's live statistics (plus process CPU and memory)
    /healthz      200 while the process answers
    /readyz       200 when the line can judge parts, else 503 with a JSON reason (see ``health.readiness``)
    /preview.jpg  the newest overlay as JPEG; 404 before the first judged part

Started by ``edge-inspector run`` when ``http.port`` > 0. It binds to ``http.host`` (default 127.0.0.1): the
endpoints have no authentication, so expose them beyond the machine only on a trusted network.

>>> server = OpsServer(loop, latest, port=0).start()   # doctest: +SKIP
>>> server.url                                          # doctest: +SKIP
'http://127.0.0.1:40123'
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.ops.health import readiness
from edge_inspector.ops.metrics import LineCollector
from edge_inspector.pipeline.sinks import LatestResult

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
Response = tuple[int, str, bytes]
"""(HTTP status, content type, body)."""


def _json(status: int, doc: dict[str, Any]) -> Response:
    return status, "application/json", json.dumps(doc).encode()


class OpsServer:
    """Serves the line's operational endpoints until ``stop()``.

    Args:
        loop: the ``InspectionLoop`` to report on (started before ``start()``, so readiness sees it running).
        latest: the ``LatestResult`` sink that the loop feeds.
        publisher: the MQTT ``ResultPublisher`` for connection and spool metrics, or None.
        host, port: where to listen; port 0 picks a free port (see ``port`` after ``start()``).
        stuck_after_s: see ``health.readiness``.
    """

    def __init__(self, loop: Any, latest: LatestResult, publisher: Any | None = None, host: str = "127.0.0.1",
                 port: int = 0, stuck_after_s: float | None = None):
        self.loop, self.latest, self.publisher = loop, latest, publisher
        self.host, self.stuck_after_s = host, stuck_after_s
        self.registry = CollectorRegistry()
        self.registry.register(LineCollector(loop, publisher))
        ProcessCollector(registry=self.registry)
        self._requested_port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self.routes = {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
                       "/preview.jpg": self._preview}

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> OpsServer:
        """Bind and serve on a daemon thread.

        Raises:
            ConfigError: the address cannot be bound (port in use, unknown host, no permission).
        """
        try:
            self._httpd = ThreadingHTTPServer((self.host, self._requested_port), _Handler)
        except OSError as exc:
            raise ConfigError(f"http.host/http.port: cannot listen on {self.host}:{self._requested_port}: {exc}; "
                              "choose another http.port (0 = off)") from exc
        self._httpd.daemon_threads = True
        self._httpd.ops = self  # the handler finds its routes here
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        log.info("ops http server listening", extra=kv(url=self.url, endpoints=",".join(self.routes)))
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)
        self._httpd = None
        log.info("ops http server stopped")

    def handle(self, path: str, accept: str | None) -> Response:
        route = self.routes.get(urlsplit(path).path)
        if route is None:
            return _json(404, {"error": f"no such endpoint {urlsplit(path).path!r}", "endpoints": list(self.routes)})
        return route(accept)

    def _metrics(self, accept: str | None) -> Response:
        encoder, content_type = choose_encoder(accept)  # Prometheus text, or OpenMetrics when the scraper asks
        return 200, content_type, encoder(self.registry)

    def _healthz(self, accept: str | None) -> Response:
        return _json(200, {"alive": True, "uptime_s": round(time.monotonic() - self._started, 3)})

    def _readyz(self, accept: str | None) -> Response:
        state = readiness(self.loop, self.latest, self._started, self.stuck_after_s, self.publisher)
        return _json(200 if state.ready else 503, state.to_json())

    def _preview(self, accept: str | None) -> Response:
        import cv2

        image = self.latest.image
        if image is None:
            return _json(404, {"error": "no part judged yet"})
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return _json(500, {"error": f"JPEG encoding failed for an image of shape {image.shape}"})
        return 200, "image/jpeg", jpeg.tobytes()


class _Handler(BaseHTTPRequestHandler):
    server_version = "edge-inspector"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        try:
            status, content_type, body = self.server.ops.handle(self.path, self.headers.get("Accept"))
        except Exception as exc:  # one failing endpoint must answer, not kill the server thread
            log.exception("ops endpoint failed", extra=kv(path=self.path))
            status, content_type, body = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        log.debug("ops http request", extra=kv(client=self.client_address[0], request=format % args))
