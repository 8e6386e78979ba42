"""Real TensorRT builds (strongly typed, Q/DQ + FP16 graphs): plan, side-car, timing cache, refusals, CLI.

Runs only where tensorrt, pycuda and an NVIDIA GPU exist; elsewhere every test here skips with one reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_inspector import cli
from edge_inspector.bundle.plans import read_sidecar, sidecar_path, write_sidecar
from edge_inspector.bundle.store import sha256_file
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import compare_engines
from edge_inspector.engines.trt_build import BuildOptions, build_engine
from edge_inspector.engines.trt_run import TrtEngine, probe_device
from edge_inspector.errors import BundleError, ConfigError, PlanMismatchError
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.trt_graphs import SOFTMAX_NODE, make_conv_bundle, trt_skip_reason

_REASON = trt_skip_reason()
pytestmark = [pytest.mark.trt, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def qdq_build(tmp_path_factory):
    bundle = make_conv_bundle(tmp_path_factory.mktemp("trt") / "qdq", qdq=True)
    return bundle, build_engine(bundle, BuildOptions(workspace_mb=256, progress=False))


def test_plan_and_sidecar_describe_the_build(qdq_build):
    bundle, result = qdq_build
    device = probe_device()
    sidecar = read_sidecar(result.plan_path)
    assert result.plan_path.parent == bundle.plans_dir and result.plan_path.suffix == ".plan"
    assert (sidecar.gpu_name, sidecar.compute_capability, sidecar.tensorrt_version) == (
        device.gpu_name, device.compute_capability, device.tensorrt_version,
    )
    assert sidecar.onnx_sha256 == bundle.manifest.graph.sha256
    assert sidecar.plan_sha256 == sha256_file(result.plan_path)
    assert sidecar.bit_plan == {"conv1": "w8a8", "conv2": "keep"}
    assert sidecar.keep_fp32_nodes == [SOFTMAX_NODE]
    assert sidecar.build_options["profile"]["image"] == {"min": [1, 32, 32, 3], "opt": [1, 32, 32, 3], "max": [1, 32, 32, 3]}
    assert sidecar.build_options["fp16_check"]["passed"] is True
    assert {"prepare_s", "parse_s", "build_s", "total_s"} <= set(sidecar.build_timings_s)
    assert (sidecar.sm_count, sidecar.total_memory_mb) == (device.sm_count, device.total_memory_mb)
    # conv1 has Q/DQ on its input and weights: TensorRT's own layer table must show it as an INT8 kernel.
    assert sidecar.precision_summary["quantized_convolutions_in_graph"] == 1
    assert sidecar.precision_summary["convolutions"].get("INT8") == 1, sidecar.engine_layers
    assert all(layer["tactic"] for layer in sidecar.engine_layers if layer["convolution"])
    cache = Path(sidecar.build_options["timing_cache"])
    assert cache.parent == bundle.plans_dir and cache.is_file() and cache.stat().st_size > 0


def test_plan_matches_onnxruntime_within_the_manifest_tolerance(qdq_build):
    bundle, result = qdq_build
    trt_engine, ort_engine = TrtEngine(bundle, result.plan_path), OrtEngine(bundle)
    try:
        report = compare_engines(
            trt_engine, ort_engine, bundle.calibration_images(), bundle.manifest.thresholds.image, bundle.manifest.parity
        )
    finally:
        trt_engine.close()
        ort_engine.close()
    assert report.passed, report.summary()


def test_rebuild_reuses_the_timing_cache(qdq_build, tmp_path):
    bundle, first = qdq_build
    cache = tmp_path / "shared.timing-cache"
    build_engine(bundle, BuildOptions(timing_cache=cache, out=tmp_path / "a.plan", progress=False))
    size = cache.stat().st_size
    second = build_engine(bundle, BuildOptions(timing_cache=cache, out=tmp_path / "b.plan", progress=False))
    assert cache.stat().st_size >= size
    assert second.sidecar.build_options["timing_cache"] == str(cache)


def test_mismatched_sidecar_is_refused_before_deserialising(qdq_build, tmp_path):
    bundle, result = qdq_build
    fake = tmp_path / "fake.plan"
    fake.write_bytes(b"garbage that TensorRT would choke on")
    sidecar = read_sidecar(result.plan_path)
    sidecar.plan_file, sidecar.tensorrt_version = fake.name, "0.0.0"
    write_sidecar(fake, sidecar)
    with pytest.raises(PlanMismatchError, match="(?s)TensorRT: plan built with 0.0.0.*build-engine --model"):
        TrtEngine(bundle, fake)


def test_replaced_plan_file_is_refused(qdq_build, tmp_path):
    bundle, result = qdq_build
    copy = tmp_path / "copy.plan"
    copy.write_bytes(result.plan_path.read_bytes() + b"\0")
    sidecar_path(copy).write_text(sidecar_path(result.plan_path).read_text())
    with pytest.raises(BundleError, match="does not match its side-car hash"):
        TrtEngine(bundle, copy)


def test_batch_above_a_fixed_graph_batch_is_refused(qdq_build, tmp_path):
    bundle, _ = qdq_build
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        build_engine(bundle, BuildOptions(batch=4, out=tmp_path / "x.plan", progress=False))


@pytest.mark.parametrize("kind", ["fp32", "tiny"])
def test_cli_builds_checks_parity_and_records_it(tmp_path, capsys, kind):
    if kind == "tiny":
        bundle = make_tiny_bundle(tmp_path / "b", width=64, height=64)
    else:
        bundle = make_conv_bundle(tmp_path / "b", qdq=False)
    code = cli.main(["build-engine", "--model", str(bundle.path), "--latency-runs", "10", "--workspace-mb", "256"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity PASS" in out and "latency tensorrt" in out
    plans = sorted(bundle.plans_dir.glob("*.plan"))
    assert len(plans) == 1
    recorded = json.loads(sidecar_path(plans[0]).read_text())["parity"]
    assert recorded["passed"] is True and recorded["latency"]["n"] == 10
