"""The line's own result sinks: the console printer, a collector for summaries, and the newest-result holder.

The other sinks live where their concern does: the MQTT publisher and the frame archive in ``publish``. Every sink
follows ``results.Sink``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import numpy as np

from edge_inspector.results import InspectionResult, Verdict


def format_result(result: InspectionResult) -> str:
    """One human line per part, e.g. ``part-00003  FAIL  0.67  score 0.183 > 0.090  2 regions  14.2 ms``."""
    if result.score is None:
        judged = f"{result.verdict.value:7s} ----  {result.error}"
    else:
        sign = ">=" if result.verdict == Verdict.FAIL else "<"
        judged = (f"{result.verdict.value:7s} {result.normalized_score:.2f}  "
                  f"score {result.score:.4g} {sign} {result.threshold:.4g}")
    parts = [f"{result.source or result.part_id:32s}", judged]
    if result.regions:
        parts.append(f"{len(result.regions)} region{'s' if len(result.regions) > 1 else ''}")
    parts.append(f"{result.latency_ms.get('total', 0.0):.1f} ms")
    if result.ground_truth is not None:
        parts.append("truth: " + ("defect" if result.ground_truth else "good"))
    return "  ".join(parts)


class ConsoleSink:
    """Prints one line per part (``format_result``)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def handle(self, result: InspectionResult) -> None:
        print(format_result(result), file=self.stream, flush=True)

    def close(self) -> None:
        self.stream.flush()


class CollectingSink:
    """Keeps every result's verdict data (without images) for summaries and tests."""

    def __init__(self, keep_images: bool = False):
        self.keep_images = keep_images
        self.results: list[InspectionResult] = []

    def handle(self, result: InspectionResult) -> None:
        if not self.keep_images:
            result = InspectionResult(**{**result.__dict__, "frame": None, "overlay": None})
        self.results.append(result)

    def close(self) -> None:
        pass


class LatestResult:
    """Remembers the newest result's picture and outcome (thread-safe).

    The main thread shows its picture in the ``--show`` preview window; the ops HTTP server serves it on
    /preview.jpg and reads its outcome for /readyz.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._error: str | None = None
        self._judged_at: float | None = None  # time.monotonic()

    def handle(self, result: InspectionResult) -> None:
        image = result.overlay if result.overlay is not None else result.frame
        with self._lock:
            if image is not None:
                self._image = image
            self._error = result.error
            self._judged_at = time.monotonic()

    def close(self) -> None:
        pass

    @property
    def image(self) -> np.ndarray | None:
        """The newest overlay (or frame, when no overlay was drawn), BGR; None before the first part."""
        with self._lock:
            return self._image

    def outcome(self) -> tuple[str | None, float | None]:
        """(why the newest part was judged fail-safe or None, monotonic time it was judged or None)."""
        with self._lock:
            return self._error, self._judged_at


class FailSafeWatch:
    """Counts parts judged fail-safe and keeps the first reason, so a run that judged nothing properly (an ROI
    outside the frame, a model that does not fit the camera) can end with a clear error instead of success."""

    def __init__(self) -> None:
        self.judged = 0
        self.fail_safe = 0
        self.first_error: str | None = None

    def handle(self, result: InspectionResult) -> None:
        self.judged += 1
        if result.error:
            self.fail_safe += 1
            self.first_error = self.first_error or result.error

    def close(self) -> None:
        pass

    @property
    def all_fail_safe(self) -> bool:
        return self.judged > 0 and self.fail_safe == self.judged
