"""Inference latency of bundles on every engine available here, side by side (what ``edge-inspector bench`` runs).

For each engine setting (ONNX Runtime on the CPU always, per thread count; TensorRT when ``engines.select`` finds a
plan that matches this GPU) the bundles are the variants of the interleaved timer (``engines.latency``): every
cycle runs every bundle once, in a rotating order, on its calibration images in turn, so a change of load on a
shared machine hits all of them alike. Ratios compare each row with the first bundle on the same engine setting, as
the median of their same-cycle ratios.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import Engine
from edge_inspector.engines.latency import engine_runner, interleaved_latency
from edge_inspector.engines.records import format_table
from edge_inspector.engines.select import open_engine
from edge_inspector.errors import ConfigError, EdgeInspectorError

BACKENDS = ("onnxruntime", "tensorrt")


@dataclass
class BenchOptions:
    runs: int = 100
    """Timed cycles: timed inferences per configuration."""
    warmup: int = 10
    """Untimed inferences per configuration first."""
    threads: tuple[int, ...] = (0,)
    """ONNX Runtime intra-op threads to try (0 = one per core)."""
    spin_wait: bool = False
    backends: tuple[str, ...] = BACKENDS

    def check(self) -> None:
        """Raises ConfigError on a count out of range or an unknown backend."""
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"--runs must be at least 1 and --warmup at least 0 "
                              f"(got runs={self.runs} warmup={self.warmup})")
        if any(threads < 0 for threads in self.threads):
            raise ConfigError(f"--threads takes 0 (one per core) or more, got {list(self.threads)}")
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            raise ConfigError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")


@dataclass
class Row:
    """One bundle on one engine configuration."""

    model_id: str
    bundle: str
    backend: str
    threads: int | None
    """ONNX Runtime intra-op threads (0 = one per core); None for TensorRT."""
    precision: str
    weight_bytes: int
    skipped: str | None = None
    """Why this configuration did not run (e.g. no TensorRT plan for this GPU)."""
    engine: dict[str, str] = field(default_factory=dict)
    n: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    fps: float | None = None
    speedup_vs_first: float | None = None
    """Median over the cycles of the first bundle's time over this row's, same engine and threads (> 1: faster)."""
    weight_ratio_vs_first: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    rows: list[Row]
    images: list[str]
    """Per bundle, which images it was timed on."""

    def table(self) -> str:
        return format_rows(self.rows)


def weight_bytes(bundle: Bundle) -> int:
    """Bytes of the graph's stored tensors (INT4 packed two per byte); the manifest's figure when it has one."""
    import onnx

    from edge_inspector.bundle.graph_size import initializer_bytes

    if bundle.manifest.quantization.weight_bytes is not None:
        return bundle.manifest.quantization.weight_bytes
    return initializer_bytes(onnx.load(str(bundle.onnx_path), load_external_data=False))


def precision(manifest) -> str:
    """'fp32', or 'qdq' with the bit plan's mix, e.g. 'qdq w8a8x12 w4a8x3 keepx2'."""
    quant = manifest.quantization
    if quant.precision != "qdq" or not quant.bit_plan:
        return quant.precision
    mix = {choice: list(quant.bit_plan.values()).count(choice) for choice in sorted(set(quant.bit_plan.values()))}
    return "qdq " + " ".join(f"{choice}x{count}" for choice, count in mix.items())


def bench_images(bundle: Bundle, count: int = 8) -> tuple[np.ndarray, str]:
    """The bundle's calibration images, or seeded noise (and a note) when it ships none."""
    images = bundle.calibration_images()
    if len(images):
        return images, f"{len(images)} calibration images"
    spec = bundle.manifest.input
    noise = np.random.default_rng(0).integers(0, 256, (count, spec.height, spec.width, 3), dtype=np.uint8)
    return noise, f"{count} random images (the bundle ships no calibration images)"


def open_rows(bundles: list[Bundle], options: BenchOptions) -> list[tuple[Row, Engine | None, np.ndarray]]:
    """Every (bundle, engine configuration): its row and, when it runs here, the opened engine and its images."""
    opened = []
    for bundle in bundles:
        images, _ = bench_images(bundle)
        common = {"model_id": bundle.manifest.model_id, "bundle": str(bundle.path),
                  "precision": precision(bundle.manifest), "weight_bytes": weight_bytes(bundle)}
        for backend in options.backends:
            for threads in (options.threads if backend == "onnxruntime" else [None]):
                row = Row(backend=backend, threads=threads, **common)
                # warm-up runs come from the timer, right before the timed cycles
                settings = EngineSettings(backend=backend, intra_op_threads=threads or 0, warmup_runs=0,
                                          spin_wait=options.spin_wait)
                try:
                    engine = open_engine(bundle, settings)
                except EdgeInspectorError as exc:  # e.g. TensorRT not installed, no plan for this GPU
                    row.skipped = str(exc)
                    engine = None
                else:
                    row.engine = engine.describe()
                opened.append((row, engine, images))
    return opened


def time_rows(opened: list[tuple[Row, Engine | None, np.ndarray]], options: BenchOptions) -> None:
    """Time every configuration that runs here and fill its row: the bundles on one engine setting (backend and
    threads) interleaved with each other, one setting after the other.

    Why not every configuration in one interleaving: no ratio is taken across settings, and sessions with other
    thread counts disturb each other in one process (models/demo with ``--spin-wait``, load ~15 on 2 cores: the
    1-thread p50 came out 24% above the earlier block-by-block timing when interleaved with the 2-thread session,
    within noise of it when timed alone).
    """
    first = opened[0][0].bundle if opened else None
    settings: dict[tuple[str, int | None], list[int]] = {}
    for i, (row, engine, _) in enumerate(opened):
        if engine is not None:
            settings.setdefault((row.backend, row.threads), []).append(i)
    for (backend, threads), indices in settings.items():
        runners = {str(i): engine_runner(opened[i][1], opened[i][2]) for i in indices}
        title = backend if threads is None else f"{backend} threads={threads or 'auto'}"
        latency = interleaved_latency(runners, options.runs, options.warmup, progress=f"bench {title}")
        reference = next((i for i in indices if opened[i][0].bundle == first), None)
        for i in indices:
            row, stats = opened[i][0], latency.stats(str(i))
            row.n, row.mean_ms, row.p50_ms, row.p99_ms = stats.n, stats.mean, stats.p50, stats.p99
            row.fps = 1e3 / stats.mean
            if reference is not None:
                row.speedup_vs_first = latency.ratio(str(reference), reference=str(i))
                ref_bytes = opened[reference][0].weight_bytes
                row.weight_ratio_vs_first = row.weight_bytes / ref_bytes if ref_bytes else None


def bench(bundles: list[Bundle], options: BenchOptions) -> BenchResult:
    """Open every bundle on every engine configuration, time them interleaved, close them.

    Raises:
        ConfigError: ``options`` out of range.
    """
    options.check()
    opened = open_rows(bundles, options)
    try:
        time_rows(opened, options)
    finally:
        for _, engine, _ in opened:
            if engine is not None:
                engine.close()
    images = [f"{bundle.manifest.model_id}: {bench_images(bundle)[1]}" for bundle in bundles]
    return BenchResult([row for row, _, _ in opened], images)


def size_text(n_bytes: int) -> str:
    """12 B, 3.4 KiB, 7.1 MiB."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    return f"{n_bytes / 1024:.1f} KiB" if n_bytes < 1024 ** 2 else f"{n_bytes / 1024 ** 2:.1f} MiB"


HEADER = ("model", "engine", "precision", "weights", "mean ms", "p50 ms", "p99 ms", "fps", "speed x", "size x")


def format_rows(rows: list[Row]) -> str:
    """A fixed-width table, one line per bundle x engine configuration; a skipped one says why."""
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = []
    for row in rows:
        engine = row.backend if row.threads is None else f"{row.backend} threads={row.threads or 'auto'}"
        cells = [row.model_id, engine, row.precision, size_text(row.weight_bytes)]
        if row.skipped:
            lines.append(cells + [f"skipped: {row.skipped}"])
        else:
            lines.append(cells + [f"{row.mean_ms:.2f}", f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", f"{row.fps:.1f}",
                                  ratio(row.speedup_vs_first), ratio(row.weight_ratio_vs_first)])
    return format_table(HEADER, lines)
