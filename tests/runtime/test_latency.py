"""The interleaved latency timer: run order, same-cycle ratios, summaries; real ONNX Runtime sessions and engines."""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.bundle.store import load_bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.latency import (
    Latency,
    LatencyStats,
    engine_runner,
    interleaved_latency,
    time_graphs,
)
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import ConfigError
from tests.fixtures.bundles import make_tiny_bundle, tiny_graph


def test_every_cycle_runs_every_variant_once_in_a_rotating_order():
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    latency = interleaved_latency(runners, cycles=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, then the cycles
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(runs) for name, runs in latency.runs_ms.items()} == {"a": 4, "b": 4, "c": 4}


def test_ratio_is_the_median_of_same_cycle_ratios_not_a_ratio_of_medians():
    # the machine slows down in cycle 2 for both variants: same-cycle ratios stay 0.5 and cancel the drift
    latency = Latency({"fp32": [10.0, 10.0, 40.0, 40.0, 40.0], "hqs": [5.0, 5.0, 20.0, 20.0, 20.0]})
    assert latency.ratio("hqs") == 0.5 and latency.ratio("fp32") == 1.0
    assert latency.ratio("fp32", reference="hqs") == 2.0
    assert latency.p50_ms("hqs") == 20.0
    assert "latency hqs" in latency.summary() and "x0.500" in latency.summary()


def test_stats_are_the_results_file_form():
    stats = LatencyStats.of([1.0, 2.0, 3.0, 10.0])
    assert stats.to_dict() == {"n": 4, "mean": 4.0, "p50": 2.5, "p99": pytest.approx(9.79), "min": 1.0, "max": 10.0}
    assert "p50 2.50 ms" in stats.text()
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.of([])


def test_bad_counts_are_refused():
    with pytest.raises(ConfigError, match="at least one timed cycle"):
        interleaved_latency({"a": lambda: None}, cycles=0)
    with pytest.raises(ConfigError, match="at least one timed cycle"):
        interleaved_latency({}, cycles=3)


def test_engine_runner_goes_through_the_images_in_turn(tmp_path):
    bundle = load_bundle(make_tiny_bundle(tmp_path / "b", width=32, height=32).path)
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1))
    seen: list[int] = []
    infer = engine.infer
    engine.infer = lambda image: seen.append(int(image[0, 0, 0])) or infer(image)
    images = np.stack([np.full((32, 32, 3), value, np.uint8) for value in (10, 20, 30)])
    latency = interleaved_latency({"tiny": engine_runner(engine, images)}, cycles=5, warmup=0)
    assert seen == [10, 20, 30, 10, 20] and latency.stats("tiny").n == 5
    with pytest.raises(ConfigError, match="at least one image"):
        engine_runner(engine, images[:0])


def test_graphs_are_timed_on_the_sessions_the_line_opens():
    graphs = {"small": tiny_graph(32, 32), "large": tiny_graph(32, 32, local=15, smooth=9)}
    latency = time_graphs(graphs, np.zeros((32, 32, 3), np.uint8), cycles=6, settings=EngineSettings(intra_op_threads=1))
    assert list(latency.runs_ms) == ["small", "large"]
    assert all(len(runs) == 6 and min(runs) > 0 for runs in latency.runs_ms.values())
    assert latency.ratio("large") > 0
