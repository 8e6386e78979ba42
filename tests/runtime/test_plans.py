"""Plan side-cars, the mismatch refusal and the backend choice (pure, no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edge_inspector.bundle.plans import (
    DeviceInfo,
    PlanSidecar,
    check_plan_matches,
    choose_backend,
    default_plan_name,
    gpu_slug,
    list_plans,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from edge_inspector.errors import BundleError, EngineError, MissingDependencyError, PlanMismatchError

ONNX_SHA = "ab" * 32
AGX_BOARD = "NVIDIA Jetson AGX Orin Developer Kit"
ORIN = DeviceInfo("Orin", "8.7", "10.3.0.30", sm_count=16, total_memory_mb=62841, module_model=AGX_BOARD)


def _sidecar(**changes) -> PlanSidecar:
    values = dict(
        plan_file="orin-trt10.3.0.30.plan", plan_sha256="cd" * 32, model_id="tile-3f2a", onnx_sha256=ONNX_SHA,
        gpu_name="Orin", compute_capability="8.7", sm_count=16, total_memory_mb=62841, module_model=AGX_BOARD,
        tensorrt_version="10.3.0.30", edge_inspector_version="0.1.0",
        bit_plan={"enc.0": "w8a8", "dec.4": "keep"}, build_options={"workspace_mb": 1024, "batch": 1},
    )
    values.update(changes)
    return PlanSidecar(**values)


def _write_plan(plans_dir: Path, name: str, sidecar: PlanSidecar | None) -> Path:
    plans_dir.mkdir(parents=True, exist_ok=True)
    plan = plans_dir / name
    plan.write_bytes(b"not a real plan; only the side-car is read here")
    if sidecar is not None:
        write_sidecar(plan, sidecar)
    return plan


def test_slug_and_default_name():
    assert gpu_slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert gpu_slug("  /// ") == "gpu"
    assert default_plan_name("Orin", "10.3.0.30") == "orin-trt10.3.0.30.plan"


def test_sidecar_round_trip(tmp_path):
    plan = _write_plan(tmp_path, "orin-trt10.3.0.30.plan", _sidecar(build_timings_s={"build": 12.5}))
    assert sidecar_path(plan).name == "orin-trt10.3.0.30.json"
    back = read_sidecar(plan)
    assert back == _sidecar(build_timings_s={"build": 12.5}, created=back.created)
    assert back.bit_plan == {"enc.0": "w8a8", "dec.4": "keep"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"format": 99}), "format 99"),
        (json.dumps({"format": 1, "plan_file": "x.plan"}), "format 1"),
        (json.dumps({"format": 2, "plan_file": "x.plan"}), "missing"),
        (json.dumps({"format": 2, "surprise": 1}), "unknown side-car keys ['surprise']"),
    ],
)
def test_bad_sidecar_is_refused_with_a_reason(tmp_path, content, message):
    plan = _write_plan(tmp_path, "a.plan", None)
    sidecar_path(plan).write_text(content)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_sidecar(plan)


def test_wrongly_typed_field_is_refused(tmp_path):
    plan = _write_plan(tmp_path, "a.plan", None)
    data = json.loads(_sidecar().to_json())
    data["gpu_name"] = 42
    data["sm_count"] = "16"
    sidecar_path(plan).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"\['gpu_name', 'sm_count'\] have the wrong type"):
        read_sidecar(plan)


ORIN_NANO = DeviceInfo("Orin", "8.7", "10.3.0.30", sm_count=8, total_memory_mb=7620,
                       module_model="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")


def test_a_plan_from_an_agx_orin_is_refused_on_an_orin_nano():
    """The driver calls both 'Orin' with compute capability 8.7; the module identity tells them apart."""
    with pytest.raises(PlanMismatchError) as info:
        check_plan_matches(_sidecar(), ORIN_NANO, "10.3.0.30", ONNX_SHA)
    text = str(info.value)
    assert "board: plan built on 'NVIDIA Jetson AGX Orin Developer Kit', this one is 'NVIDIA Jetson Orin Nano" in text
    assert "SM count: plan built on 16 SMs, this GPU has 8" in text
    assert "GPU memory: plan built with 62841 MiB, this GPU has 7620 MiB" in text
    assert "GPU:" not in text and "compute capability" not in text


def test_memory_within_the_tolerance_is_the_same_module():
    """Carve-outs move the reported memory a little between JetPack releases; that is still the same module."""
    check_plan_matches(_sidecar(), dataclasses.replace(ORIN, total_memory_mb=62841 - 2000), "10.3.0.30", ONNX_SHA)
    with pytest.raises(PlanMismatchError, match="GPU memory"):
        check_plan_matches(_sidecar(), dataclasses.replace(ORIN, total_memory_mb=32000), "10.3.0.30", ONNX_SHA)


def test_plan_without_sidecar_is_refused(tmp_path):
    plan = _write_plan(tmp_path, "a.plan", None)
    with pytest.raises(BundleError, match="no side-car a.json.*build-engine"):
        read_sidecar(plan)


def test_matching_plan_passes():
    check_plan_matches(_sidecar(), ORIN, "10.3.0.30", ONNX_SHA)


def test_mismatch_names_every_difference_and_the_rebuild_command():
    sidecar = _sidecar(gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9", onnx_sha256="ef" * 32)
    with pytest.raises(PlanMismatchError) as info:
        check_plan_matches(sidecar, ORIN, "11.4.1.2", ONNX_SHA, bundle_dir="models/tile")
    text = str(info.value)
    assert "GPU: plan built on 'NVIDIA GeForce RTX 4090', this machine has 'Orin'" in text
    assert "compute capability: plan 8.9, this GPU 8.7" in text
    assert "TensorRT: plan built with 10.3.0.30, installed 11.4.1.2" in text
    assert "ONNX graph: plan built from sha256 efefefefefef" in text
    assert "edge-inspector build-engine --model models/tile" in text


def test_only_the_tensorrt_version_differs():
    with pytest.raises(PlanMismatchError) as info:
        check_plan_matches(_sidecar(), ORIN, "10.3.0.31", ONNX_SHA)
    lines = [ln for ln in str(info.value).splitlines() if ln.strip().startswith("- ")]
    assert lines == ["  - TensorRT: plan built with 10.3.0.30, installed 10.3.0.31"]


def test_list_plans_newest_first_and_keeps_plans_without_sidecar(tmp_path):
    _write_plan(tmp_path, "old.plan", _sidecar(plan_file="old.plan", created="2026-01-01T00:00:00+00:00"))
    _write_plan(tmp_path, "new.plan", _sidecar(plan_file="new.plan", created="2026-06-01T00:00:00+00:00"))
    _write_plan(tmp_path, "bare.plan", None)
    names = [(p.name, s is not None) for p, s in list_plans(tmp_path)]
    assert names == [("new.plan", True), ("old.plan", True), ("bare.plan", False)]
    assert list_plans(tmp_path / "absent") == []


# ------------------------------------------------------------------------------------------- backend choice


def test_auto_picks_the_matching_plan(tmp_path):
    stale = _write_plan(tmp_path, "stale.plan", _sidecar(tensorrt_version="10.0.1.6", created="2026-09-01"))
    good = _write_plan(tmp_path, "good.plan", _sidecar(created="2026-01-01"))
    choice = choose_backend("auto", list_plans(tmp_path), ORIN, ONNX_SHA)
    assert (choice.backend, choice.plan) == ("tensorrt", good)
    assert "good.plan matches" in choice.reason
    assert stale.exists()


def test_auto_falls_back_to_onnxruntime_and_says_why(tmp_path):
    no_trt = choose_backend("auto", [], DeviceInfo(), ONNX_SHA)
    assert (no_trt.backend, no_trt.plan) == ("onnxruntime", None)
    assert "TensorRT not installed" in no_trt.reason

    no_gpu = choose_backend("auto", [], DeviceInfo(tensorrt_version="10.3.0.30"), ONNX_SHA)
    assert "no NVIDIA GPU found" in no_gpu.reason
    no_pycuda = choose_backend("auto", [], DeviceInfo(tensorrt_version="10.3", gpu_problem="pycuda not installed"),
                               ONNX_SHA)
    assert no_pycuda.reason == "ONNX Runtime: pycuda not installed"

    no_plan = choose_backend("auto", [], ORIN, ONNX_SHA, bundle_dir="models/tile")
    assert "no TensorRT plan in the bundle" in no_plan.reason
    assert "build-engine --model models/tile" in no_plan.reason

    _write_plan(tmp_path, "other.plan", _sidecar(onnx_sha256="00" * 32))
    _write_plan(tmp_path, "bare.plan", None)
    mismatch = choose_backend("auto", list_plans(tmp_path), ORIN, ONNX_SHA)
    assert mismatch.backend == "onnxruntime"
    assert "other.plan: ONNX graph" in mismatch.reason and "bare.plan: no readable side-car" in mismatch.reason


def test_onnxruntime_requested_ignores_plans(tmp_path):
    _write_plan(tmp_path, "good.plan", _sidecar())
    choice = choose_backend("onnxruntime", list_plans(tmp_path), ORIN, ONNX_SHA)
    assert (choice.backend, choice.plan) == ("onnxruntime", None)


def test_tensorrt_requested_without_a_fit_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDependencyError, match=r"edge-inspector\[tensorrt-cu12\]|JetPack"):
        choose_backend("tensorrt", [], DeviceInfo(), ONNX_SHA)
    with pytest.raises(EngineError, match="no NVIDIA GPU found"):
        choose_backend("tensorrt", [], DeviceInfo(tensorrt_version="10.3.0.30"), ONNX_SHA)
    _write_plan(tmp_path, "x86.plan", _sidecar(gpu_name="NVIDIA A2", compute_capability="8.6"))
    with pytest.raises(PlanMismatchError, match="x86.plan: GPU: plan built on 'NVIDIA A2'"):
        choose_backend("tensorrt", list_plans(tmp_path), ORIN, ONNX_SHA)
