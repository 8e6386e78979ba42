"""Backend choice wired into ``open_engine``: 'auto' says which engine and why; 'tensorrt' without a fit is an error."""

from __future__ import annotations

import logging

import pytest

from edge_inspector.bundle.plans import read_sidecar, write_sidecar
from edge_inspector.config import EngineSettings
from edge_inspector.engines.select import open_engine
from edge_inspector.errors import BundleError, MissingDependencyError
from tests.fixtures.trt_graphs import make_conv_bundle, trt_skip_reason

_REASON = trt_skip_reason()
needs_trt = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
needs_no_tensorrt = pytest.mark.skipif(
    _REASON != "TensorRT not installed", reason="TensorRT installed: its absence cannot be shown here"
)


@pytest.fixture
def selection_log(caplog):
    """Capture the selector's records even after the CLI's setup_logging stopped propagation."""
    logger = logging.getLogger("edge_inspector.engines.select")
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(logging.NOTSET)


def _reasons(caplog) -> set[str]:
    return {r.fields["reason"] for r in caplog.records if r.getMessage() == "engine selected"}


@needs_no_tensorrt
def test_auto_without_tensorrt_runs_onnxruntime_and_says_why(tmp_path, selection_log):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    engine = open_engine(bundle, EngineSettings(backend="auto", warmup_runs=0))
    assert engine.name == "onnxruntime"
    engine.close()
    assert _reasons(selection_log) == {"ONNX Runtime: TensorRT not installed"}


@needs_no_tensorrt
def test_tensorrt_requested_without_tensorrt_is_refused(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    with pytest.raises(MissingDependencyError, match=r"edge-inspector\[tensorrt-cu12\]"):
        open_engine(bundle, EngineSettings(backend="tensorrt"))


def test_onnxruntime_requested_never_probes_plans(tmp_path, selection_log):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    engine = open_engine(bundle, EngineSettings(backend="onnxruntime", warmup_runs=0, plan="does-not-exist.plan"))
    assert engine.name == "onnxruntime"
    engine.close()
    assert _reasons(selection_log) == {"ONNX Runtime requested"}


def test_missing_explicit_plan_is_a_bundle_error(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    with pytest.raises(BundleError, match="plan not found: nowhere.plan"):
        open_engine(bundle, EngineSettings(backend="auto", plan="nowhere.plan"))


@pytest.mark.trt
@needs_trt
def test_auto_picks_a_matching_plan_and_skips_a_stale_one(tmp_path, selection_log):
    from edge_inspector.engines.trt_build import BuildOptions, build_engine

    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    result = build_engine(bundle, BuildOptions(workspace_mb=256, progress=False))
    engine = open_engine(bundle, EngineSettings(backend="auto", warmup_runs=1))
    assert engine.name == "tensorrt"
    engine.close()
    selection_log.clear()
    stale = read_sidecar(result.plan_path)
    stale.tensorrt_version = "0.0.0"
    write_sidecar(result.plan_path, stale)
    engine = open_engine(bundle, EngineSettings(backend="auto", warmup_runs=0))
    assert engine.name == "onnxruntime"
    engine.close()
    (reason,) = _reasons(selection_log)
    assert "TensorRT: plan built with 0.0.0" in reason
