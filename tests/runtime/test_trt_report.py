"""The GPU report (``build-engine --check``, reusable by a machine-wide doctor): made-up machines judged on the CPU."""

from __future__ import annotations

import dataclasses

import pytest

from edge_inspector import cli
from edge_inspector.bundle.plans import PlanSidecar, write_sidecar
from edge_inspector.engines.cuda_buffers import GpuProbe
from edge_inspector.engines.gpu_report import MachineFacts, assess, gpu_report
from tests.fixtures.trt_graphs import make_conv_bundle

DESKTOP_GPU = GpuProbe("NVIDIA GeForce RTX 4090", "8.9", 128, 24080, driver_cuda_version="12.4",
                       pycuda_cuda_version="12.4")
DESKTOP = MachineFacts(gpu=DESKTOP_GPU, tensorrt_version="10.13.0.35", tensorrt_path="/venv/tensorrt/__init__.py",
                       tensorrt_wheel_cuda=12, pycuda_version="2026.1", kernel_driver="550.54.14",
                       tensorrt_in_venv=True)
ORIN_GPU = GpuProbe("Orin", "8.7", 16, 62841, driver_cuda_version="12.6", pycuda_cuda_version="12.6")
JETSON = MachineFacts(gpu=ORIN_GPU, tensorrt_version="10.3.0.30",
                      tensorrt_path="/usr/lib/python3.10/dist-packages/tensorrt/__init__.py", pycuda_version="2026.1",
                      jetson_release="# R36 (release), REVISION: 4.0", board="NVIDIA Jetson AGX Orin Developer Kit")


def _statuses(report) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def test_a_working_desktop_is_usable():
    report = assess(DESKTOP)
    assert report.usable, report.lines()
    assert _statuses(report) == {"GPU": "ok", "driver": "ok", "TensorRT": "ok", "pycuda": "ok", "CUDA": "ok"}
    assert any("550.54.14; supports CUDA 12.4" in line for line in report.lines())


def test_a_cuda13_tensorrt_on_a_cuda12_driver_is_refused_with_the_right_extra():
    report = assess(dataclasses.replace(DESKTOP, tensorrt_wheel_cuda=13))
    assert not report.usable
    (trt,) = [c for c in report.checks if c.name == "TensorRT"]
    assert "built for CUDA 13, but the driver supports only CUDA 12.4" in trt.detail
    assert "edge-inspector[tensorrt-cu12]" in trt.detail


def test_a_pip_tensorrt_shadowing_jetpacks_is_refused():
    assert assess(JETSON).usable
    shadowed = dataclasses.replace(JETSON, tensorrt_version="11.4.0.106", tensorrt_in_venv=True, tensorrt_wheel_cuda=12,
                                   tensorrt_path="/opt/edge-inspector/.venv/lib/tensorrt/__init__.py")
    (trt,) = [c for c in assess(shadowed).checks if c.name == "TensorRT"]
    assert trt.status == "fail" and "shadows JetPack's" in trt.detail


def test_missing_pycuda_is_named_not_reported_as_no_gpu():
    facts = dataclasses.replace(DESKTOP, gpu=GpuProbe(problem="pycuda not installed (...)"), pycuda_version=None)
    statuses = _statuses(assess(facts))
    assert statuses["pycuda"] == "fail" and statuses["driver"] == "ok"  # the kernel driver is still there
    assert [c.detail for c in assess(facts).checks if c.name == "GPU"] == ["pycuda not installed (...)"]


def test_plans_are_checked_against_this_module(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    plan = bundle.plans_dir / "orin.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not read")
    write_sidecar(plan, PlanSidecar(
        plan_file=plan.name, plan_sha256="0" * 64, model_id="m", onnx_sha256=bundle.manifest.graph.sha256,
        gpu_name="Orin", compute_capability="8.7", sm_count=16, total_memory_mb=62841,
        module_model="NVIDIA Jetson AGX Orin Developer Kit", tensorrt_version="10.3.0.30", edge_inspector_version="t",
    ))
    assert _statuses(assess(JETSON, bundle))["plan orin.plan"] == "ok"
    nano = dataclasses.replace(JETSON, gpu=dataclasses.replace(ORIN_GPU, sm_count=8, total_memory_mb=7620),
                               board="NVIDIA Jetson Orin Nano Developer Kit")
    report = assess(nano, bundle)
    assert not report.usable
    assert "SM count: plan built on 16 SMs, this GPU has 8" in [c for c in report.checks if c.name.startswith("plan")][0].detail


def test_check_on_this_machine_reports_and_exits_one(tmp_path, capsys):
    if gpu_report().usable:
        pytest.skip("the TensorRT path is usable on this machine: the failing report cannot be shown here")
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    assert cli.main(["build-engine", "--check", "--model", str(bundle.path)]) == 1
    out = capsys.readouterr().out
    assert "TensorRT path: NOT usable here" in out
    assert "plan " in out and "none in" in out
    assert not bundle.plans_dir.exists()
