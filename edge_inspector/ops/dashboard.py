"""What the web dashboard shows: the latest verdicts with thumbnails, and one state document for the page.

``RecentResults`` is a result sink (``results.Sink``): it keeps the last ``size`` verdicts with a small JPEG of each
overlay (encoded once, on the loop's publish thread, so the page never waits for an encoder) and the decision times
of the last minute for a parts-per-minute rate. ``line_state`` assembles everything the page polls: counters and
rates, latency p50/p99, broker and spool, source, threshold and sensitivity, paused, and the recent verdicts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_inspector.results import InspectionResult

THUMB_WIDTH = 160
THUMB_QUALITY = 80
RATE_WINDOW_S = 60.0


@dataclass
class RecentResult:
    """One verdict as the dashboard lists it."""

    number: int
    """Position in this run (1, 2, ...); the thumbnail's id."""
    part_id: str
    source: str
    verdict: str
    score: float | None
    normalized_score: float | None
    threshold: float
    regions: list[dict[str, int]]
    decided_at: float
    latency_ms: float
    error: str | None
    ground_truth: bool | None
    thumbnail: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "thumbnail"}
        return {**doc, "has_thumbnail": self.thumbnail is not None}


def thumbnail_jpeg(image: np.ndarray | None) -> bytes | None:
    """A ``THUMB_WIDTH`` pixels wide JPEG of ``image`` (BGR or gray), or None."""
    if image is None:
        return None
    height, width = image.shape[:2]
    small = cv2.resize(image, (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width))),
                       interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return jpeg.tobytes() if ok else None


class RecentResults:
    """The last ``size`` verdicts with thumbnails, and the rate of parts over the last minute (thread-safe)."""

    def __init__(self, size: int = 24):
        self._lock = threading.Lock()
        self._items: deque[RecentResult] = deque(maxlen=size)
        self._decided: deque[float] = deque()
        self._count = 0

    def handle(self, result: InspectionResult) -> None:
        image = result.overlay if result.overlay is not None else result.frame
        regions = [{"x": r.x, "y": r.y, "width": r.width, "height": r.height, "area_px": r.area_px}
                   for r in result.regions]
        thumbnail = thumbnail_jpeg(image)
        with self._lock:
            self._count += 1
            self._items.append(RecentResult(
                self._count, result.part_id, result.source, result.verdict.value, result.score,
                result.normalized_score, result.threshold, regions, result.decided_at,
                result.latency_ms.get("total", 0.0), result.error, result.ground_truth, thumbnail))
            self._decided.append(time.monotonic())

    def close(self) -> None:
        pass

    def items(self) -> list[RecentResult]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._items))

    def thumbnail(self, number: int) -> bytes | None:
        with self._lock:
            return next((item.thumbnail for item in self._items if item.number == number), None)

    def parts_per_minute(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._decided and now - self._decided[0] > RATE_WINDOW_S:
                self._decided.popleft()
            recent = len(self._decided)
        return recent * 60.0 / RATE_WINDOW_S


def line_state(loop: Any, publisher: Any | None, recent: RecentResults, station: str,
               write_enabled: bool) -> dict[str, Any]:
    """The one document the dashboard page polls."""
    snap = loop.snapshot()
    counts = snap["counts"]
    judged = counts.get("judged", 0)
    rejects = counts.get("FAIL", 0) + counts.get("UNKNOWN", 0)
    total = snap["latency_ms"].get("total", {})
    params = loop.params
    state = {
        "station": station, "model_id": loop.manifest.model_id, "engine": loop.engine.name,
        "mode": snap["mode"], "paused": snap["paused"], "failure": snap["failure"], "source": snap["source"],
        "counts": {"judged": judged, "pass": counts.get("PASS", 0), "fail": counts.get("FAIL", 0),
                   "unknown": counts.get("UNKNOWN", 0), "dropped": counts.get("dropped", 0),
                   "errors": counts.get("errors", 0)},
        "reject_rate": rejects / judged if judged else None,
        "parts_per_minute": recent.parts_per_minute(),
        "latency_ms": {"p50": total.get("p50"), "p99": total.get("p99"), "n": total.get("n", 0)},
        "decision": {"threshold": params.threshold, "sensitivity": params.sensitivity,
                     "effective_threshold": params.effective_threshold,
                     "calibrated_threshold": loop.manifest.thresholds.image},
        "broker": None, "write_enabled": write_enabled,
        "recent": [item.to_json() for item in recent.items()],
    }
    if publisher is not None:
        health = publisher.health
        state["broker"] = {"url": publisher.settings.url, "connected": health.connected, "spool": health.pending,
                           "acked": health.acked, "last_error": health.last_error}
    return state
