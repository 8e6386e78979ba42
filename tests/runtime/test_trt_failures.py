"""Every failure of the TensorRT path becomes a clear EngineError; 'auto' falls back to ONNX Runtime and says why.

Runs on the CPU with the *stand-in* ``tensorrt`` / ``pycuda`` (``tests/fixtures/trt_stand_in.py``), which only
reproduces failure behaviour (None returns, foreign exception types, out of memory): nothing here shows that a real
plan loads or computes the right numbers (``test_trt_run.py`` does, on a GPU).
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from edge_inspector.bundle.plans import PlanSidecar, read_sidecar, write_sidecar
from edge_inspector.bundle.store import sha256_file
from edge_inspector.config import EngineSettings
from edge_inspector.engines.select import open_engine
from edge_inspector.engines.trt_run import TrtEngine, probe_device
from edge_inspector.errors import EngineError, PlanMismatchError
from tests.fixtures import trt_stand_in
from tests.fixtures.trt_graphs import make_conv_bundle

TENSORS = {
    "image": ((1, 32, 32, 3), np.uint8, True),
    "anomaly_map": ((1, 1, 32, 32), np.float32, False),
    "score": ((1,), np.float32, False),
}


@pytest.fixture(scope="module")
def conv_bundle(tmp_path_factory):
    return make_conv_bundle(tmp_path_factory.mktemp("stand-in") / "b", qdq=True)


def stand_in_plan(bundle, name: str = "stand-in.plan"):
    """A plan file (not a TensorRT plan: the stand-in never reads it) with a side-car fitting the stand-in GPU."""
    device = probe_device()
    plan = bundle.plans_dir / name
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"stand-in plan bytes")
    write_sidecar(plan, PlanSidecar(
        plan_file=plan.name, plan_sha256=sha256_file(plan), model_id=bundle.manifest.model_id,
        onnx_sha256=bundle.manifest.graph.sha256, gpu_name=device.gpu_name,
        compute_capability=device.compute_capability, sm_count=device.sm_count,
        total_memory_mb=device.total_memory_mb, module_model=device.module_model,
        tensorrt_version=device.tensorrt_version, edge_inspector_version="test",
    ))
    return plan


@pytest.fixture
def stand_in(monkeypatch, conv_bundle):
    installed = trt_stand_in.install(monkeypatch, TENSORS)
    plan = stand_in_plan(conv_bundle)
    yield installed, plan
    plan.unlink()


@pytest.fixture
def selection_log(caplog):
    logger = logging.getLogger("edge_inspector.engines.select")
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(logging.NOTSET)


def _reason(caplog) -> str:
    (reason,) = {r.fields["reason"] for r in caplog.records if r.getMessage() == "engine selected"}
    return reason


def _all_freed(cuda) -> bool:
    return cuda.live_device == set() and cuda.live_host == 0 and cuda.live_streams == 0


FAILURES = {
    "no execution context (out of GPU memory)": ("context_returns_none", True, r"out of GPU memory \(it needs 64 MiB"),
    "trt.Runtime raises TypeError": ("runtime_raises", True, r"TypeError: pybind11::init\(\)"),
    "plan does not deserialise": ("deserialize_returns_none", True, "could not load .*another version"),
    "input shape refused": ("set_input_shape_ok", False, "does not accept input shape"),
    "device allocation out of memory": ("free_device_bytes", 100, "out of GPU memory allocating 3072 bytes"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_open_failures_are_engine_errors_and_free_everything(stand_in, conv_bundle, failure):
    (installed, plan), (attribute, value, message) = stand_in, FAILURES[failure]
    setattr(installed.behaviour, attribute, value)
    with pytest.raises(EngineError, match=message):
        TrtEngine(conv_bundle, plan)
    assert _all_freed(installed.cuda)


@pytest.mark.parametrize("failure", ["no execution context (out of GPU memory)", "trt.Runtime raises TypeError"])
def test_auto_falls_back_to_onnxruntime_and_tensorrt_fails_clearly(stand_in, conv_bundle, selection_log, failure):
    (installed, _), (attribute, value, message) = stand_in, FAILURES[failure]
    setattr(installed.behaviour, attribute, value)
    engine = open_engine(conv_bundle, EngineSettings(backend="auto", warmup_runs=1))
    assert engine.name == "onnxruntime"
    engine.close()
    assert _reason(selection_log).startswith("ONNX Runtime: TensorRT plan")
    assert "stand-in.plan failed" in _reason(selection_log)
    with pytest.raises(EngineError, match=message):
        open_engine(conv_bundle, EngineSettings(backend="tensorrt", warmup_runs=0))


def test_a_failing_warmup_falls_back_too(stand_in, conv_bundle, selection_log):
    installed, _ = stand_in
    installed.behaviour.execute_raises = RuntimeError("stand-in: illegal memory access")
    engine = open_engine(conv_bundle, EngineSettings(backend="auto", warmup_runs=1))
    assert engine.name == "onnxruntime"
    engine.close()
    assert "RuntimeError: stand-in: illegal memory access" in _reason(selection_log)
    assert _all_freed(installed.cuda)


@pytest.mark.parametrize("how", ["returns False", "raises RuntimeError"])
def test_inference_failures_are_engine_errors(stand_in, conv_bundle, how):
    installed, plan = stand_in
    engine = TrtEngine(conv_bundle, plan)
    if how == "returns False":
        installed.behaviour.execute_ok = False
    else:
        installed.behaviour.execute_raises = RuntimeError("stand-in: launch failed")
    with pytest.raises(EngineError, match="TensorRT inference failed"):
        engine.infer(np.zeros((32, 32, 3), np.uint8))
    engine.close()
    assert _all_freed(installed.cuda)


def test_only_pycuda_missing_is_not_reported_as_no_gpu(monkeypatch, conv_bundle, selection_log):
    trt_stand_in.install(monkeypatch, TENSORS)
    monkeypatch.setitem(sys.modules, "pycuda", None)  # import pycuda -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    engine = open_engine(conv_bundle, EngineSettings(backend="auto", warmup_runs=0))
    engine.close()
    assert _reason(selection_log) == "ONNX Runtime: pycuda not installed (the TensorRT path needs it for GPU buffers)"


def test_no_cuda_device_says_so(stand_in, conv_bundle, selection_log):
    installed, _ = stand_in
    installed.behaviour.no_device = True
    engine = open_engine(conv_bundle, EngineSettings(backend="auto", warmup_runs=0))
    engine.close()
    assert _reason(selection_log) == "ONNX Runtime: no CUDA device 0 (this machine has 0)"


def test_mismatched_plan_is_refused_before_deserialising(stand_in, conv_bundle):
    installed, plan = stand_in
    sidecar = read_sidecar(plan)
    sidecar.tensorrt_version = "0.0.0"
    write_sidecar(plan, sidecar)
    installed.behaviour.runtime_raises = True  # would fail if the plan got as far as TensorRT
    with pytest.raises(PlanMismatchError, match="(?s)TensorRT: plan built with 0.0.0.*build-engine --model"):
        TrtEngine(conv_bundle, plan)
