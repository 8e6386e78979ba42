"""Parity report and latency summary over two real ONNX Runtime engines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.engines.fp16_check import bundle_with_graph
from edge_inspector.engines.trt_prep import prepare_bundle_graph
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import Outputs, ParityReport, compare_engines, compare_outputs
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
    assert f"score drift {drift:.2e} exceeds the tolerance {drift / 2:.2e}" in strict.failures[0]
    with pytest.raises(EngineError, match="does not match"):
        strict.raise_if_failed()
    report.raise_if_failed()


def test_decisive_verdict_flips_fail(engines):
    opened, images = engines
    # The other model scores ~0.002 where the reference scores ~0.7: at 0.3 every verdict flips, far from the band.
    report = compare_engines(opened["other"], opened["reference"], images, 0.3, ParitySpec())
    assert report.verdict_agreement == 0.0 and report.to_dict()["borderline_images"] == 0
    assert any("verdicts agree on 0.0% of the non-borderline images" in f for f in report.failures)
    assert any("exceeds the tolerance" in f for f in report.failures)
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
    report = ParityReport(
        candidate="c", reference="r", threshold=1.0, tolerances=ParitySpec(),
        reference_scores=np.array([2.0, 0.0]), candidate_scores=np.array([2.2, 1e-4]),
        map_abs_diff=np.zeros(2), map_peak=np.ones(2),
    )
    np.testing.assert_allclose(report.score_drift, [0.1, 0.1])  # second: 1e-4 / (1e-3 * threshold)
    report.threshold = None  # no threshold: the floor is tiny, the drift of a zero reference huge
    assert report.score_drift[1] > 1e6


def test_no_images_is_an_error(engines):
    opened, _ = engines
    with pytest.raises(EngineError, match="at least one"):
        compare_engines(opened["fp16"], opened["reference"], np.zeros((0, 32, 32, 3), np.uint8), 1.0, ParitySpec())


def test_maps_are_compared_per_image_relative_to_its_own_peak():
    """A small-peak image with a small absolute difference is what fails, not the large-peak one."""
    reference = Outputs("r", np.array([[[100.0, 0.0]], [[1.0, 0.0]]]), np.array([5.0, 5.0]))
    candidate = Outputs("c", np.array([[[100.05, 0.0]], [[1.01, 0.0]]]), np.array([5.0, 5.0]))
    report = compare_outputs(candidate, reference, None, ParitySpec(score_rtol=1e-3), map_rtol=1e-3)
    assert report.map_max_abs_diff == pytest.approx(0.05) and report.map_rel_diff == pytest.approx(0.01)
    assert not report.passed and "anomaly maps differ by 1.00e-02" in report.failures[0]
    loose = compare_outputs(candidate, reference, None, ParitySpec(score_rtol=1e-3), map_rtol=0.02)
    assert loose.passed and loose.verdict_agreement == 1.0 and "verdicts" not in loose.summary()


def test_figures_only_and_broken_outputs():
    reference = Outputs("r", np.ones((2, 3, 3)), np.array([1.0, 2.0]))
    nan_map = Outputs("c", np.full((2, 3, 3), np.nan), np.array([1.0, 2.0]))
    figures = compare_outputs(nan_map, reference, None, None)
    assert figures.passed and figures.map_rel_diff == np.inf and "parity figures" in figures.summary()
    judged = compare_outputs(nan_map, reference, None, ParitySpec(), map_rtol=1.0)
    assert not judged.passed  # a NaN map is not "within" any tolerance
    with pytest.raises(EngineError, match="anomaly maps"):
        compare_outputs(Outputs("c", np.ones((2, 4, 4)), np.ones(2)), reference, None, None)
