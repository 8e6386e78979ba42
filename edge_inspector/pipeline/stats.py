"""Per-stage latency and counters of the loop, safe to read from other threads (status, metrics, benchmarks)."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

STAGES = ("decode", "preprocess", "inference", "decision", "overlay", "publish", "total")
WINDOW = 10_000
"""Latest samples kept per stage: enough for a stable p99, bounded for a 24/7 run."""


class _Window:
    """The latest ``size`` samples of one stage in a ring of float64, all of its memory taken (and written) at
    start: a line that runs for weeks shows a flat memory curve from its first part, not one that climbs for the
    first ``size`` parts as a queue of Python floats would."""

    def __init__(self, size: int = WINDOW):
        self._values = np.full(size, np.nan)
        self._next = self._count = 0

    def append(self, value: float) -> None:
        self._values[self._next] = value
        self._next = (self._next + 1) % self._values.size
        self._count = min(self._count + 1, self._values.size)

    def __len__(self) -> int:
        return self._count

    def values(self) -> np.ndarray:
        """A copy of the samples held (in no particular order)."""
        return self._values[: self._count].copy()


class LoopStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples = {stage: _Window() for stage in STAGES}
        self.counts: Counter[str] = Counter()
        """frames_read, judged, dropped, timeouts, errors, sink_errors and one count per verdict."""

    def record(self, stage: str, ms: float) -> None:
        with self._lock:
            self._samples[stage].append(ms)

    def record_part(self, timings: dict[str, float], verdict: str) -> None:
        """One judged part: its stage timings and its verdict."""
        with self._lock:
            for stage, ms in timings.items():
                self._samples[stage].append(ms)
            self.counts["judged"] += 1
            self.counts[verdict] += 1

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def latency(self) -> dict[str, dict[str, float]]:
        """{stage: {n, mean, p50, p99}} in milliseconds over the latest samples."""
        with self._lock:
            copies = {stage: window.values() for stage, window in self._samples.items() if len(window)}
        return {
            stage: {
                "n": int(values.size),
                "mean": float(values.mean()),
                "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99)),
            }
            for stage, values in copies.items()
        }

    def snapshot(self) -> dict:
        with self._lock:
            counts = dict(self.counts)
        return {"counts": counts, "latency_ms": self.latency()}
