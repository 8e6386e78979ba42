"""Replay pacing for recorded sources (image folders, video files): ``capture.fps`` frames per second at most.

A camera delivers at its own rate; a folder or a file would otherwise be read as fast as the line judges it (a
looped folder filled the archive at ~45 parts/s). ``Pacer.wait`` before each read keeps a steady rate without
drift, and never sleeps to catch up after a slow part.
"""

from __future__ import annotations

import time


class Pacer:
    """Spaces calls of ``wait`` at least ``1 / fps`` seconds apart (no pacing when ``fps`` is None or 0)."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self._due: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self._due is not None and now < self._due:
            time.sleep(self._due - now)
            now = self._due
        self._due = now + self.period
