"""What build-engine keeps after its check: the side-car record of a passing plan, the removal of a failing one.

Needs no GPU: the parity and latency are measured between two real ONNX Runtime engines that take the plan's and
the reference's roles (the FP16-prepared graph and the original); TensorRT itself is tested in test_trt_build.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.bundle.plans import PlanSidecar, read_sidecar, sidecar_path, write_sidecar
from edge_inspector.engines.fp16_check import bundle_with_graph
from edge_inspector.engines.latency import engine_runner, interleaved_latency
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import compare_engines
from edge_inspector.engines.plan_check import PlanCheck, check_plan, keep_or_remove
from edge_inspector.engines.trt_prep import prepare_bundle_graph
from edge_inspector.errors import BundleError
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.trt_graphs import make_conv_bundle


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan_check")
    bundle = make_conv_bundle(root / "fp32", qdq=False)
    prepare_bundle_graph(bundle, root / "fp16.onnx")
    candidate = OrtEngine(bundle_with_graph(bundle, root / "fp16.onnx", root / "fp16"))
    reference = OrtEngine(bundle)
    yield bundle, candidate, reference
    candidate.close()
    reference.close()


def _plan(tmp_path, bundle) -> tuple:
    plan = tmp_path / "plans" / "gpu-trt.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"stands for a serialized plan: only the side-car is read here")
    write_sidecar(plan, PlanSidecar(plan_file=plan.name, plan_sha256="cd" * 32, model_id=bundle.manifest.model_id,
                                    onnx_sha256=bundle.manifest.graph.sha256, gpu_name="gpu",
                                    compute_capability="9.0", sm_count=132, total_memory_mb=81559, module_model="",
                                    tensorrt_version="10.0", edge_inspector_version="0"))
    return plan, sidecar_path(plan)


def test_a_passing_plan_keeps_parity_and_interleaved_latency_in_its_sidecar(roles, tmp_path):
    bundle, candidate, reference = roles
    images = bundle.calibration_images()
    parity = compare_engines(candidate, reference, images, bundle.manifest.thresholds.image, bundle.manifest.parity)
    latency = interleaved_latency({"tensorrt": engine_runner(candidate, images[:1]),
                                   "onnxruntime": engine_runner(reference, images[:1])}, cycles=4, warmup=1)
    check = PlanCheck(parity, latency)
    plan, sidecar = _plan(tmp_path, bundle)
    assert parity.passed and keep_or_remove(plan, check)
    recorded = read_sidecar(plan).parity
    assert recorded["passed"] is True and recorded["images"] == len(images)
    assert recorded["latency"]["n"] == 4 and recorded["onnxruntime_latency"]["n"] == 4
    assert recorded["tensorrt_over_onnxruntime"] == pytest.approx(
        float(np.median(np.divide(latency.runs_ms["tensorrt"], latency.runs_ms["onnxruntime"]))))
    assert "parity PASS" in check.summary() and "latency tensorrt" in check.summary()


def test_a_failing_plan_is_removed_with_its_sidecar(roles, tmp_path):
    bundle, candidate, reference = roles
    images = bundle.calibration_images()
    strict = ParitySpec(score_rtol=1e-12)
    check = PlanCheck(compare_engines(candidate, reference, images, bundle.manifest.thresholds.image, strict), None)
    plan, sidecar = _plan(tmp_path, bundle)
    assert not check.parity.passed and check.latency_record() == {}
    assert not keep_or_remove(plan, check)
    assert not plan.exists() and not sidecar.exists()


def test_a_bundle_without_calibration_images_cannot_be_checked(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b", 32, 32, calibration_images=np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(BundleError, match="ships no calibration images"):
        check_plan(bundle, tmp_path / "x.plan", latency_runs=3)
