"""Latency, timed the one way this project compares speeds: interleaved, run by run.

Why interleaved: on a shared machine the speed drifts over seconds, and variants timed one after the other (10 runs
each) differed by up to +-10% for the same graph (``hqs`` against ``hqs_small``, which compute the same). So one
cycle runs every variant once, in an order that rotates every cycle, and the variants share the conditions of that
cycle (tens of ms). Per variant: p50 (p99, mean...) over the cycles; between two variants: the median of their
same-cycle ratios, which the machine's drifts cancel out of.

Runs follow each other without pause; with a 2 ms pause before each run (a line between frames) the HQS / FP32
ratio at 2 threads went from 0.57 to 0.60 in a one-off check (the pool threads are woken at the start of every run,
which costs the shorter integer graph relatively more).

    latency = interleaved_latency({"fp32": engine_runner(fp32, images), "hqs": engine_runner(hqs, images)}, 100)
    latency.stats("hqs").p50, latency.ratio("hqs")          # ms, and HQS time / FP32 time
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import Engine
from edge_inspector.errors import ConfigError

if TYPE_CHECKING:  # onnx and ONNX Runtime load only when graphs are timed (bench's command line stays light)
    import onnx

Runner = Callable[[], object]
"""One timed run of a variant (e.g. one ``engine.infer``); what it returns is ignored."""


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timed runs, in milliseconds; ``to_dict`` is the form results files hold (``latency_ms``)."""

    n: int
    mean: float
    p50: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Raises ValueError on no samples."""
        values = np.asarray(samples_ms, np.float64)
        if not values.size:
            raise ValueError("no latency samples to summarise")
        return cls(n=int(values.size), mean=float(values.mean()), p50=float(np.percentile(values, 50)),
                   p99=float(np.percentile(values, 99)), min=float(values.min()), max=float(values.max()))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self) -> str:
        return f"p50 {self.p50:.2f} ms  p99 {self.p99:.2f} ms  mean {self.mean:.2f} ms  ({self.n} runs)"


@dataclass
class Latency:
    """Interleaved latencies of several variants (``interleaved_latency``), in ms."""

    runs_ms: dict[str, list[float]]
    """Every timed run per variant, in cycle order: entry i of every variant comes from cycle i."""

    def stats(self, name: str) -> LatencyStats:
        return LatencyStats.of(self.runs_ms[name])

    def p50_ms(self, name: str) -> float:
        return self.stats(name).p50

    def ratio(self, name: str, reference: str | None = None) -> float:
        """Median over the cycles of ``name``'s time over ``reference``'s (default: the first variant) in the same
        cycle: < 1 means ``name`` is faster."""
        reference = reference if reference is not None else next(iter(self.runs_ms))
        return float(np.median(np.asarray(self.runs_ms[name]) / np.asarray(self.runs_ms[reference])))

    def summary(self) -> str:
        """One line per variant: its figures and its ratio to the first."""
        width = max(len(name) for name in self.runs_ms)
        return "\n".join(f"latency {name:<{width}}  {self.stats(name).text()}  x{self.ratio(name):.3f}"
                         for name in self.runs_ms)


def interleaved_latency(runners: Mapping[str, Runner], cycles: int, warmup: int = 2,
                        progress: str | None = None) -> Latency:
    """Time ``cycles`` cycles, each running every runner once, in an order that rotates every cycle.

    Args:
        runners: the variants by name; ratios use the first as the reference.
        cycles: timed cycles (timed runs per variant).
        warmup: untimed runs of each variant first (first runs allocate and pack).
        progress: a progress bar with this title on a terminal; None: no bar.

    Raises:
        ConfigError: no runners, or fewer than one cycle.
    """
    names = list(runners)
    if not names or cycles < 1 or warmup < 0:
        raise ConfigError(f"latency needs a variant and at least one timed cycle (got {len(names)} variants, "
                          f"{cycles} cycles, {warmup} warm-up runs)")
    for name in names:
        for _ in range(warmup):
            runners[name]()
    runs: dict[str, list[float]] = {name: [] for name in names}
    bar = tqdm(total=cycles * len(names), desc=progress, unit="run", disable=None if progress else True,
               file=sys.stderr, leave=False)
    with bar:
        for cycle in range(cycles):
            shift = cycle % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                runners[name]()
                runs[name].append((time.perf_counter() - start) * 1e3)
            bar.update(len(names))
    return Latency(runs)


def engine_runner(engine: Engine, images: np.ndarray) -> Runner:
    """One ``engine.infer`` per call (host copies included), on the next of ``images`` (N, H, W, 3) in turn."""
    if not len(images):
        raise ConfigError("timing an engine needs at least one image")
    order = itertools.cycle(range(len(images)))
    return lambda: engine.infer(images[next(order)])


def time_graphs(graphs: Mapping[str, onnx.ModelProto], image: np.ndarray, cycles: int,
                settings: EngineSettings | None = None, warmup: int = 2) -> Latency:
    """ONNX Runtime latency of one (H, W, 3) image through each of ``graphs``, interleaved, on the sessions the line's
    engine opens (``ort.load_session`` with ``settings``)."""
    from edge_inspector.engines.ort import load_session

    sessions = {name: load_session(graph, settings).session for name, graph in graphs.items()}
    runners = {name: _session_runner(session, image) for name, session in sessions.items()}
    return interleaved_latency(runners, cycles, warmup)


def _session_runner(session, image: np.ndarray) -> Runner:
    feed = {session.get_inputs()[0].name: image[np.newaxis]}
    return lambda: session.run(None, feed)
