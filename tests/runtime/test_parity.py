"""Parity report and latency summary over two real ONNX Runtime engines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.engines.fp16_check import bundle_with_graph
from edge_inspector.engines.trt_prep import prepare_bundle_graph
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import compare_engines, measure_latency
from edge_inspector.errors import EngineError
from tests.fixtures.trt_graphs import conv_graph, make_conv_bundle


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Reference FP32 engine, its FP16-prepared twin, a different model, and the calibration images."""
    root = tmp_path_factory.mktemp("parity")
    bundle = make_conv_bundle(root / "fp32", qdq=False)
    prepare_bundle_graph(bundle, root / "fp16.onnx")
    onnx.save(conv_graph(32, 32, qdq=False, seed=7), root / "other.onnx")
    opened = {
        "reference": OrtEngine(bundle),
        "fp16": OrtEngine(bundle_with_graph(bundle, root / "fp16.onnx", root / "fp16")),
        "other": OrtEngine(bundle_with_graph(bundle, root / "other.onnx", root / "other")),
    }
    yield opened, bundle.calibration_images()
    for engine in opened.values():
        engine.close()


def test_identical_engines_agree_exactly(engines):
    opened, images = engines
    report = compare_engines(opened["reference"], opened["reference"], images, 1.0, ParitySpec())
    assert report.passed and report.failures == []
    assert report.score_drift.max() == 0.0 and report.map_max_abs_diff == 0.0
    assert report.verdict_agreement == 1.0
    assert report.to_dict()["images"] == len(images)


def test_fp16_drift_is_measured_and_judged_by_the_tolerance(engines):
    opened, images = engines
    report = compare_engines(opened["fp16"], opened["reference"], images, 1.0, ParitySpec())
    drift = float(report.score_drift.max())
    assert 0 < drift < 0.05 and report.passed
    assert 0 < report.map_max_abs_diff and 0 < report.map_rel_diff < 0.05

    strict = compare_engines(opened["fp16"], opened["reference"], images, 1.0, ParitySpec(score_rtol=drift / 2))
    assert not strict.passed
    assert f"score drift {drift:.2e} exceeds the manifest tolerance {drift / 2:.2e}" in strict.failures[0]
    with pytest.raises(EngineError, match="does not match"):
        strict.raise_if_failed()
    report.raise_if_failed()


def test_decisive_verdict_flips_fail(engines):
    opened, images = engines
    # The other model scores ~0.002 where the reference scores ~0.7: at 0.3 every verdict flips, far from the band.
    report = compare_engines(opened["other"], opened["reference"], images, 0.3, ParitySpec())
    assert report.verdict_agreement == 0.0 and report.to_dict()["borderline_images"] == 0
    assert any("verdicts agree on 0.0% of the non-borderline images" in f for f in report.failures)
    assert any("exceeds the manifest tolerance" in f for f in report.failures)
    assert "parity FAIL" in report.summary()


def test_a_flip_right_at_the_threshold_is_borderline_not_a_failure(engines):
    opened, images = engines
    ref = opened["reference"].infer(images[0]).score
    cand = opened["fp16"].infer(images[0]).score
    assert cand != ref
    threshold = (ref + cand) / 2  # image 0's verdict differs between the engines, by a drift the manifest allows
    report = compare_engines(opened["fp16"], opened["reference"], images, threshold, ParitySpec())
    assert report.passed, report.summary()
    assert report.borderline_flips == 1 and report.verdict_agreement == 1.0
    assert "1 of them flipped" in report.summary()


def test_score_drift_is_relative_with_a_floor():
    from edge_inspector.engines.parity import ParityReport

    report = ParityReport(
        candidate="c", reference="r", threshold=1.0, tolerances=ParitySpec(),
        reference_scores=np.array([2.0, 0.0]), candidate_scores=np.array([2.2, 1e-4]),
        map_max_abs_diff=0.0, map_rel_diff=0.0,
    )
    np.testing.assert_allclose(report.score_drift, [0.1, 0.1])  # second: 1e-4 / (1e-3 * threshold)


def test_no_images_is_an_error(engines):
    opened, _ = engines
    with pytest.raises(EngineError, match="at least one"):
        compare_engines(opened["fp16"], opened["reference"], np.zeros((0, 32, 32, 3), np.uint8), 1.0, ParitySpec())


def test_latency_summary(engines):
    opened, images = engines
    summary = measure_latency(opened["reference"], images[0], runs=20, warmup=2)
    assert summary.runs == 20
    assert 0 < summary.min_ms <= summary.p50_ms <= summary.p99_ms <= summary.max_ms
    assert summary.engine.startswith("onnxruntime")
    assert "p50" in summary.summary() and set(summary.to_dict()) >= {"p50_ms", "p99_ms", "mean_ms"}
    with pytest.raises(EngineError, match="at least one timed run"):
        measure_latency(opened["reference"], images[0], runs=0)
