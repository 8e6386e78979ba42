"""The TensorRT engine behind the common Engine interface, on a real plan (GPU machines only)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_inspector.engines.base import Engine
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.trt_build import BuildOptions, build_engine
from edge_inspector.engines.trt_run import TrtEngine
from edge_inspector.errors import EngineError
from tests.fixtures.trt_graphs import make_conv_bundle, trt_skip_reason

_REASON = trt_skip_reason()
pytestmark = [pytest.mark.trt, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    bundle = make_conv_bundle(tmp_path_factory.mktemp("trt") / "qdq", qdq=True)
    result = build_engine(bundle, BuildOptions(workspace_mb=256, progress=False))
    opened = TrtEngine(bundle, result.plan_path)
    yield bundle, opened
    opened.close()


def test_implements_the_engine_interface(engine):
    bundle, trt_engine = engine
    assert isinstance(trt_engine, Engine) and trt_engine.name == "tensorrt"
    info = trt_engine.describe()
    assert info["backend"] == "tensorrt" and info["plan"].endswith(".plan") and "sm " in info["device"]
    trt_engine.warmup(2)


def test_outputs_have_the_contract_shapes_and_track_onnxruntime(engine):
    bundle, trt_engine = engine
    reference = OrtEngine(bundle)
    for image in bundle.calibration_images():
        got, want = trt_engine.infer(image), reference.infer(image)
        assert got.anomaly_map.shape == (32, 32) and got.anomaly_map.dtype == np.float32
        assert np.isfinite(got.anomaly_map).all()
        assert got.score == pytest.approx(want.score, rel=bundle.manifest.parity.score_rtol)
    reference.close()


def test_results_are_not_overwritten_by_the_next_frame(engine):
    bundle, trt_engine = engine
    first_image, second_image = bundle.calibration_images()[:2]
    first = trt_engine.infer(first_image)
    kept = first.anomaly_map.copy()
    trt_engine.infer(second_image)
    np.testing.assert_array_equal(first.anomaly_map, kept)


def test_runs_on_another_thread(engine):
    bundle, trt_engine = engine
    image = bundle.calibration_images()[0]
    expected = trt_engine.infer(image).score
    results = []
    worker = threading.Thread(target=lambda: results.append(trt_engine.infer(image).score))
    worker.start()
    worker.join()
    assert results == [pytest.approx(expected)]


def test_wrong_input_is_an_engine_error(engine):
    _, trt_engine = engine
    with pytest.raises(EngineError, match="uint8"):
        trt_engine.infer(np.zeros((32, 32, 3), np.float32))


def test_close_twice_is_harmless(engine, tmp_path):
    bundle, trt_engine = engine
    second = TrtEngine(bundle, trt_engine.plan_path)
    second.close()
    second.close()
