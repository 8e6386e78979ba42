"""``edge-inspector bench`` through the real CLI on real ONNX Runtime sessions of two tiny fixture bundles."""

import json

import numpy as np
import pytest

from edge_inspector import cli
from edge_inspector.bundle.store import load_bundle
from edge_inspector.ops.bench import precision, weight_bytes
from tests.fixtures.bundles import make_tiny_bundle

TINY_WEIGHT_BYTES = 4 + 8
"""The tiny graph stores one float32 scale (1/255) and one int64 shape."""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    first = make_tiny_bundle(root / "small", 64, 64, model_id="tiny-64").path
    second = make_tiny_bundle(root / "large", 96, 96, model_id="tiny-96", local=15, smooth=7,
                              calibration_images=np.zeros((0, 96, 96, 3), np.uint8)).path
    return first, second


def bench(capsys, *argv):
    code = cli.main(["bench", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_bundles_side_by_side_with_json(bundles, capsys, tmp_path):
    first, second = bundles
    report = tmp_path / "out" / "bench.json"
    code, out, _ = bench(capsys, "--model", first, "--models", second, "--runs", 6, "--warmup", 1, "--threads", 1, 2,
                         "--json", report)
    assert code == 0
    doc = json.loads(report.read_text())
    assert doc["command"].startswith("edge-inspector bench --model ") and doc["date"] and doc["machine"]["cores"]
    assert doc["timing"] == "interleaved" and doc["runs"] == 6
    rows = {(r["model_id"], r["backend"], r["threads"]): r for r in doc["rows"]}
    assert set(rows) == {(m, "onnxruntime", t) for m in ("tiny-64", "tiny-96") for t in (1, 2)} | \
        {("tiny-64", "tensorrt", None), ("tiny-96", "tensorrt", None)}
    for threads in (1, 2):
        ref, other = rows[("tiny-64", "onnxruntime", threads)], rows[("tiny-96", "onnxruntime", threads)]
        for row in (ref, other):
            assert row["skipped"] is None and row["n"] == 6 and row["precision"] == "fp32"
            assert 0 < row["p50_ms"] <= row["p99_ms"] and row["fps"] == pytest.approx(1e3 / row["mean_ms"])
            assert row["weight_bytes"] == TINY_WEIGHT_BYTES
            assert row["engine"]["intra_op_threads"] == str(threads)
        assert ref["speedup_vs_first"] == 1.0 and other["speedup_vs_first"] > 0  # median of same-cycle ratios
        assert other["weight_ratio_vs_first"] == 1.0
    for model in ("tiny-64", "tiny-96"):  # no plan in a fixture bundle, so TensorRT never runs here
        assert rows[(model, "tensorrt", None)]["skipped"] and rows[(model, "tensorrt", None)]["n"] == 0
    assert "tiny-96: 8 random images (the bundle ships no calibration images)" in doc["images"]
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["model", "engine", "precision"]
    assert any(line.startswith("tiny-96") and "onnxruntime threads=2" in line for line in lines)
    assert any("tensorrt" in line and "skipped:" in line for line in lines)


def test_onnxruntime_only_needs_no_tensorrt_row(bundles, capsys, tmp_path):
    code, out, _ = bench(capsys, "--model", bundles[0], "--runs", 2, "--warmup", 0, "--backends", "onnxruntime",
                         "--spin-wait", "--json", tmp_path / "b.json")
    assert code == 0 and "tensorrt" not in out and "threads=auto" in out
    assert "--spin-wait" in json.loads((tmp_path / "b.json").read_text())["command"]


def test_bad_input_is_a_clear_error(bundles, capsys, tmp_path):
    code, _, err = bench(capsys, "--model", tmp_path / "no-such-bundle")
    assert code == 2 and "no-such-bundle" in err
    code, _, err = bench(capsys, "--model", bundles[0], "--runs", 0)
    assert code == 2 and "--runs" in err
    code, _, err = bench(capsys, "--model", bundles[0], "--threads", -1)
    assert code == 2 and "--threads" in err


def test_precision_and_weight_bytes_come_from_the_manifest_when_it_has_them(bundles):
    bundle = load_bundle(bundles[0])
    assert precision(bundle.manifest) == "fp32" and weight_bytes(bundle) == TINY_WEIGHT_BYTES
    quant = bundle.manifest.quantization.model_copy(update={
        "precision": "qdq", "bit_plan": {"stem": "keep", "b1": "w8a8", "b2": "w8a8", "b3": "w4a8"},
        "weight_bytes": 1234})
    quantized = bundle.manifest.model_copy(update={"quantization": quant})
    assert precision(quantized) == "qdq keepx1 w4a8x1 w8a8x2"
    assert weight_bytes(type(bundle)(bundle.path, quantized)) == 1234


def test_bundles_interleave_within_an_engine_setting_not_across(bundles):
    """Sessions with other thread counts would disturb each other's timing; ratios never cross settings anyway."""
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.ort import OrtEngine
    from edge_inspector.ops.bench import BenchOptions, Row, bench_images, time_rows

    calls: list[tuple[str, int]] = []
    opened = []
    for threads in (1, 2):
        for path in bundles:
            bundle = load_bundle(path)
            engine = OrtEngine(bundle, EngineSettings(intra_op_threads=threads))
            infer = engine.infer
            engine.infer = lambda image, key=(bundle.manifest.model_id, threads), infer=infer: (
                calls.append(key) or infer(image))
            row = Row(bundle.manifest.model_id, str(path), "onnxruntime", threads, "fp32", TINY_WEIGHT_BYTES)
            opened.append((row, engine, bench_images(bundle)[0]))
    time_rows(opened, BenchOptions(runs=3, warmup=0, threads=(1, 2)))
    assert calls == [("tiny-64", 1), ("tiny-96", 1), ("tiny-96", 1), ("tiny-64", 1), ("tiny-64", 1), ("tiny-96", 1),
                     ("tiny-64", 2), ("tiny-96", 2), ("tiny-96", 2), ("tiny-64", 2), ("tiny-64", 2), ("tiny-96", 2)]
    assert all(row.n == 3 and row.speedup_vs_first > 0 for row, _, _ in opened)
    assert [row.speedup_vs_first for row, _, _ in opened][::2] == [1.0, 1.0]
