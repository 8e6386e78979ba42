"""``edge-inspector calibrate`` end to end on a tiny HaloAE checkpoint and a tiny MVTec-layout folder."""

from __future__ import annotations

import onnx
import pytest
import torch
import yaml

from edge_inspector import cli
from edge_inspector.bundle.store import load_bundle
from edge_inspector.engines.cpu_features import has_vnni
from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.training.trainer import save_checkpoint
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.synthetic_dataset import write_synthetic_category

OVERRIDES = ["model.width=64", "model.height=64", "model.layers=[stage2]", "model.widths=[32,32,16]",
             "model.heads=[2,2]", "model.kernels=[3,3]", "train.holdout_fraction=0.35", "score.head=reconstruction"]


def _tiny_checkpoint(tmp_path):
    """(checkpoint, data folder): an untrained tiny haloae-lite (reconstruction head) and a 14-image category."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = write_synthetic_category(tmp_path / "tiles", n_train=14, n_test_good=1, n_test_defect=1)
    preset = load_preset("haloae-lite", OVERRIDES)
    return save_checkpoint(tmp_path / "model.pt", build_model(preset.model, pretrained=False), preset), data


@pytest.mark.slow
def test_calibrate_writes_a_qdq_bundle_and_plan_files(tmp_path, capsys):
    checkpoint, data = _tiny_checkpoint(tmp_path)
    out, plans = tmp_path / "hqs", tmp_path / "calibration"
    rc = cli.main(["calibrate", "--model", str(checkpoint), "--data", str(data), "--out", str(out),
                   "--budget-bits", "6", "--qat-steps", "2", "--defects-per-good", "1", "--calibration-images", "4",
                   "--accept-drop", "--hessian-samples", "1", "--threads", "1", "--no-progress", "--plan-dir", str(plans)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    bundle = load_bundle(out)
    quant = bundle.manifest.quantization
    assert quant.precision == "qdq" and quant.table == "calibration/tiles-haloae-lite-hqs.yaml"
    assert set(quant.bit_plan.values()) <= {"w4a8", "w8a8", "keep"} and len(quant.bit_plan) == 25
    assert quant.keep_fp32_nodes and quant.weight_bytes > 0
    graph = onnx.load(str(bundle.onnx_path))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") >= 2 * 20 and ops.count("Softmax") == len(quant.keep_fp32_nodes)
    for folder in (out / "calibration", plans):
        doc = yaml.safe_load((folder / "tiles-haloae-lite-hqs.yaml").read_text())
        assert doc["bit_plan"] == quant.bit_plan
        # the budget holds unless repair promoted units; the stem's FP32 pin (3 input channels) is outside it
        stem_extra_bits = 3 * 32 * 9 * (32 - 8) if quant.bit_plan["model.backbone.net._conv_stem"] == "keep" else 0
        budget_bits = (doc["summary"]["unit_weight_bytes"] * 8 - stem_extra_bits) / doc["summary"]["weights"]
        assert budget_bits <= 6.0 + 1e-6 or doc["summary"]["repair_steps"]
        summary = doc["summary"]  # the shipped model's drop, after stage 2, against the default tolerance
        drop = max(summary["probe_image_auroc_fp32"] - summary["probe_image_auroc_hqs"],
                   summary["probe_pixel_auroc_fp32"] - summary["probe_pixel_auroc_hqs"])
        assert summary["final_probe_drop"] == pytest.approx(drop, abs=0.01)
        assert summary["final_within_tolerance"] == (drop <= 1.0)
        assert set(summary["final_drop_intervals"]) == {"image_auroc", "pixel_auroc"}
        for interval in summary["final_drop_intervals"].values():
            assert interval["low"] <= interval["value"] <= interval["high"]
        # RAAD's table: every attention block by depth, entropy at most that of a uniform row
        depth = summary["attention_by_depth"]
        assert [row["block"] for row in depth] == [n for n in quant.bit_plan if n.endswith("attention")]
        assert all(0 < row["entropy_normal"] <= row["max_entropy"] + 1e-6 for row in depth)
        markdown = (folder / "tiles-haloae-lite-hqs.md").read_text()
        assert "| bits | KiB |" in markdown and "## Attention by depth" in markdown
    assert "speed_ratio" in printed and "model.to_features" in printed
    # 8-bit weights in the full range exactly where this CPU's kernels take it; what ORT holds after load
    assert quant.weight_codes == (127 if has_vnni() else 63) and quant.weight_codes_reason
    assert 0 < summary["runtime_weight_bytes_hqs"] < summary["runtime_weight_bytes_fp32"]


@pytest.mark.slow
def test_a_failed_final_check_exits_non_zero_unless_the_drop_is_accepted(tmp_path, capsys):
    checkpoint, data = _tiny_checkpoint(tmp_path)
    # a tolerance no model meets: the check must fail, and say so, with the bundle written for inspection
    common = ["--model", str(checkpoint), "--data", str(data), "--budget-bits", "8", "--qat-steps", "0",
              "--defects-per-good", "1", "--calibration-images", "4", "--hessian-samples", "0", "--threads", "1",
              "--rounding", "nearest", "--tolerance", "-1000", "--no-progress"]
    assert cli.main(["calibrate", *common, "--out", str(tmp_path / "failed")]) == 1
    captured = capsys.readouterr()
    assert "fails the final check" in captured.err and "--accept-drop" in captured.err
    assert "final_within_tolerance" in captured.out and load_bundle(tmp_path / "failed").manifest.quantization
    assert cli.main(["calibrate", *common, "--out", str(tmp_path / "accepted"), "--accept-drop"]) == 0


@pytest.mark.slow
def test_calibrate_keeps_the_fp32_bundle_threshold_policy(tmp_path, capsys):
    """Given the FP32 bundle, the QDQ bundle's thresholds use its target rates (not the defaults), set on the
    quantized model's own held-back scores; an explicit flag still wins."""
    checkpoint, data = _tiny_checkpoint(tmp_path)
    bundle_dir = tmp_path / "fp32"
    work = bundle_dir.with_name("fp32.work") / "checkpoints"
    work.mkdir(parents=True)
    checkpoint.rename(work / "last.pt")
    assert cli.main(["export", "--checkpoint", str(work / "last.pt"), "--data", str(data), "--out", str(bundle_dir),
                     "--target-frr", "0.25", "--pixel-fpr", "0.05", "--no-progress"]) == 0
    common = ["--data", str(data), "--budget-bits", "8", "--qat-steps", "0", "--defects-per-good", "1", "--accept-drop",
              "--calibration-images", "4", "--hessian-samples", "0", "--threads", "1", "--no-progress"]
    assert cli.main(["calibrate", "--model", str(bundle_dir), "--out", str(tmp_path / "hqs"), *common]) == 0
    assert "the FP32 bundle's target rates: false-reject 0.25" in capsys.readouterr().out
    manifest = load_bundle(tmp_path / "hqs").manifest
    thresholds = manifest.thresholds
    assert (thresholds.target_false_reject_rate, thresholds.target_pixel_false_positive_rate) == (0.25, 0.05)
    # the quantized model's own held-back scores: about a quarter of them at or above the image threshold
    assert manifest.score.image.quantiles["0.5"] < thresholds.image <= manifest.score.image.max
    assert cli.main(["calibrate", "--model", str(bundle_dir), "--out", str(tmp_path / "hqs2"), "--target-frr", "0.02",
                     *common]) == 0
    again = load_bundle(tmp_path / "hqs2").manifest.thresholds
    assert (again.target_false_reject_rate, again.target_pixel_false_positive_rate) == (0.02, 0.001)


def test_threshold_policy_of_a_bundle_that_has_no_quantile_thresholds(tmp_path):
    """F1 thresholds from a labelled set cannot carry over to the quantized model: the default rates, said aloud."""
    from edge_inspector.bundle.manifest import Thresholds
    from edge_inspector.bundle.thresholds import ThresholdPolicy
    from edge_inspector.workflows.calibrate import threshold_policy

    f1 = Thresholds(image=1.0, image_method="f1", pixel=1.0, pixel_method="f1")
    assert ThresholdPolicy.of(f1) is None
    old = Thresholds(image=1.0, target_false_reject_rate=0.05, pixel=1.0)  # written before the pixel rate was recorded
    assert ThresholdPolicy.of(old) == ThresholdPolicy(0.05, ThresholdPolicy().pixel_false_positive_rate)
    policy, source = threshold_policy(None, None)
    assert policy == ThresholdPolicy() and "no FP32 bundle" in source
    hand_set = make_tiny_bundle(tmp_path / "manual")  # thresholds set by hand
    policy, source = threshold_policy(hand_set.path, None)
    assert policy == ThresholdPolicy() and "manual / manual, which do not carry over" in source
    given = ThresholdPolicy(0.1, 0.01)
    assert threshold_policy(None, given)[0] == given


def test_calibrate_refuses_a_missing_model(tmp_path, capsys):
    rc = cli.main(["calibrate", "--model", str(tmp_path / "nope.pt"), "--data", str(tmp_path), "--out",
                   str(tmp_path / "o")])
    assert rc == 2 and "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "bundle").mkdir()
    rc = cli.main(["calibrate", "--model", str(tmp_path / "bundle"), "--data", str(tmp_path), "--out",
                   str(tmp_path / "o")])
    assert rc == 2 and "without a training checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_a_location_head_bundle_refits_the_head_and_stores_int8_factors(tmp_path, capsys):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # more fit images than head dims: with fewer, each cell's covariance is mostly shrinkage and the distance
    # magnifies single-code rounding differences between ORT's integer kernels and torch
    data = write_synthetic_category(tmp_path / "tiles", n_train=40, n_test_good=1, n_test_defect=1)
    preset = load_preset("haloae-lite", [*OVERRIDES[:-1], "score.head=location", "model.location.grid_stride=16",
                                         "model.location.dims=8"])
    model = build_model(preset.model)
    from edge_inspector.data.folders import load_images, scan_category

    images = load_images(scan_category(data).train, 64, 64)
    model.set_feature_statistics(torch.from_numpy(images))
    model.fit_location(torch.from_numpy(images))
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, preset)
    out = tmp_path / "hqs"
    rc = cli.main(["calibrate", "--model", str(checkpoint), "--data", str(data), "--out", str(out),
                   "--budget-bits", "6", "--qat-steps", "2", "--defects-per-good", "1", "--calibration-images", "4", "--accept-drop",
                   "--hessian-samples", "1", "--threads", "1", "--no-progress", "--plan-dir", str(tmp_path / "p")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    bundle = load_bundle(out)
    assert bundle.manifest.score.head == "location"
    plan = bundle.manifest.quantization.bit_plan
    # only what the location graph runs: backbone convs (Lite0 up to stage6); no auto-encoder, no head projection
    assert plan and all(name.startswith("model.backbone") for name in plan)
    graph = onnx.load(str(bundle.onnx_path))
    blocked = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" for a in n.attribute)]
    assert [n.output[0] for n in blocked] == ["model.location.cell_precision_factor"]
    # ... and its input on an 8-bit grid, so ONNX Runtime runs the head's MatMul as an integer one
    from edge_inspector.engines.ort_rewrites import prepare_for_onnxruntime

    assert [n.name for n in graph.graph.node if n.op_type == "QuantizeLinear" and "location" in n.name] == [
        "model.location.cell_precision_factor/input_Q"]
    assert prepare_for_onnxruntime(graph)["integer_matmuls"] == 1
    assert not any(n.op_type == "Softmax" for n in graph.graph.node)
    summary = yaml.safe_load((tmp_path / "p" / "tiles-haloae-lite-hqs.yaml").read_text())["summary"]
    # ONNX Runtime runs the fake-quant torch model's numbers, INT8 factors included. Stated tolerance for a deep
    # integer graph: 2% of the score. The integer kernels accumulate exactly in int32, the float reference rounds
    # as it sums, so a value next to a rounding boundary lands one 8-bit step away now and then, and ~30 integer
    # layers pass such steps on (seen here: 0.3-1.8%, also for an elementwise input normalisation instead of the
    # 1x1 conv); a wrong grid, scale or zero point is off by far more (the tiny-net tests hold each conv to 2 steps)
    assert summary["parity"]["max_score_diff"] < 2e-2 and summary["qat_steps"] == 0


@pytest.mark.slow
def test_calibrate_for_tensorrt_writes_signed_grids_only(tmp_path, capsys):
    """``--target tensorrt``: no activation on the unsigned grid, so TensorRT preparation has nothing inexact to do."""
    from onnx import numpy_helper

    from edge_inspector.engines.trt_prep import prepare_bundle_graph

    checkpoint, data = _tiny_checkpoint(tmp_path)
    common = ["--model", str(checkpoint), "--data", str(data), "--budget-bits", "8", "--qat-steps", "0",
              "--defects-per-good", "1", "--calibration-images", "4", "--hessian-samples", "0", "--threads", "1",
              "--tolerance", "100", "--rounding", "nearest", "--no-progress"]  # no repair: the plan is the pins
    unsigned = {}
    for target in ("onnxruntime", "tensorrt"):
        out = tmp_path / target
        assert cli.main(["calibrate", *common, "--out", str(out), "--target", target]) == 0, capsys.readouterr().out
        bundle = load_bundle(out)
        assert bundle.manifest.quantization.target == target
        # the stem reads the 3-channel image: FP32 for ONNX Runtime (its integer kernels are slower there)
        stem = bundle.manifest.quantization.bit_plan["model.backbone.net._conv_stem"]
        assert (stem == "keep") == (target == "onnxruntime")
        doc = yaml.safe_load((out / "calibration" / "tiles-haloae-lite-hqs.yaml").read_text())
        if target == "tensorrt":  # INT8 or FP16 per unit, never INT4, and the plan says why
            assert "w4a8" not in bundle.manifest.quantization.bit_plan.values()
            assert doc["summary"]["candidates"] == ["w8a8", "keep"] and bundle.manifest.quantization.weight_codes == 127
            reasons = [row["pinned"] for row in doc["units"]]
            assert all(reasons) and sum("no INT4 convolution" in r for r in reasons) == len(reasons) - 2  # + first, last
        graph = onnx.load(str(bundle.onnx_path))
        inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        zero_points = [inits[n.input[2]] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
        unsigned[target] = sum(int(z.dtype == "uint8" and z == 0) for z in zero_points)
        report = prepare_bundle_graph(bundle, tmp_path / f"{target}.fp16.onnx")
        assert report.unsigned_to_int8 == (0 if target == "tensorrt" else report.unsigned_to_int8)
        assert any("unsigned activation grid" in w for w in report.warnings) == (target == "onnxruntime")
    assert unsigned["onnxruntime"] > 0 and unsigned["tensorrt"] == 0
