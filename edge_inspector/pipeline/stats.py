"""Per-stage latency and counters of the loop, safe to read from other threads (status, metrics, benchmarks)."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

STAGES = ("decode", "preprocess", "inference", "decision", "overlay", "publish", "total")
WINDOW = 10_000
"""Latest samples kept per stage: enough for a stable p99, bounded for a 24/7 run."""


class LoopStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {stage: deque(maxlen=WINDOW) for stage in STAGES}
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
            copies = {stage: np.array(values) for stage, values in self._samples.items() if values}
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
