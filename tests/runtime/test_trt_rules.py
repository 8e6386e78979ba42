"""The TensorRT ONNX parser's rules, checked on prepared graphs on the CPU (``engines.trt_rules``).

Graphs are built with onnx.helper; rewrites that claim to keep the ONNX meaning are run in real ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.engines import trt_rules
from edge_inspector.engines.trt_prep import prepare_graph
from edge_inspector.errors import BundleError
from tests.fixtures.trt_graphs import SOFTMAX_NODE, conv_graph


def qdq_graph(scale=0.05, zero_point: np.ndarray | None = None, scale_dtype=np.float32, block_size: int = 0,
              topk: int | None = None, width: int = 8) -> onnx.ModelProto:
    """x (1, width) -> QuantizeLinear -> DequantizeLinear -> [TopK k] -> y; the zero point only when given."""
    scale = np.array(scale, scale_dtype)
    inits = [numpy_helper.from_array(scale, "s")]
    qdq_inputs = ["x", "s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        qdq_inputs.append("zp")
    extra = {"block_size": block_size, "axis": 1} if block_size else {}
    nodes = [helper.make_node("QuantizeLinear", qdq_inputs, ["q"], name="act_q", **extra),
             helper.make_node("DequantizeLinear", ["q", *qdq_inputs[1:]], ["dq"], name="act_dq", **extra)]
    x_type = TensorProto.FLOAT16 if scale_dtype == np.float16 else TensorProto.FLOAT
    if topk is None:
        nodes.append(helper.make_node("Identity", ["dq"], ["y"], name="out"))
        out = helper.make_tensor_value_info("y", x_type, [1, width])
    else:
        inits.append(numpy_helper.from_array(np.array([topk], np.int64), "k"))
        nodes.append(helper.make_node("TopK", ["dq", "k"], ["y", "idx"], name="score_topk", axis=1))
        out = helper.make_tensor_value_info("y", x_type, [1, topk])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, [1, width])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _rules(model) -> list[tuple[str, str]]:
    return [(f.rule, f.node) for f in trt_rules.check_graph(model)]


def test_a_missing_zero_point_is_uint8_in_onnx_and_flagged():
    model = qdq_graph(zero_point=None)
    assert _rules(model) == [("qdq-zero-point", "act_q"), ("qdq-zero-point", "act_dq")]
    assert "ONNX means uint8 0, TensorRT reads int8" in trt_rules.check_graph(model)[0].message


def test_making_zero_points_explicit_keeps_the_onnx_values():
    model = qdq_graph(zero_point=None)
    x = np.linspace(-2, 12, 8, dtype=np.float32)[None]  # 12 / 0.05 = 240 steps: above int8's 127
    before = _run(model, x)
    assert trt_rules.make_zero_points_explicit(model) == 2
    zero_points = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if "zero_point" in t.name}
    assert {z.dtype for z in zero_points.values()} == {np.dtype(np.uint8)}
    np.testing.assert_array_equal(_run(model, x), before)
    assert before.max() == pytest.approx(12.0)  # uint8 range, which an int8 reading would clip at 6.35
    # The explicit uint8 zero is still not what TensorRT takes: the unsigned-grid rewrite must move it.
    assert [r for r, _ in _rules(model)] == ["qdq-zero-point", "qdq-zero-point"]


def test_int8_zero_points_pass_and_implied_int8_needs_no_change():
    assert _rules(qdq_graph(zero_point=np.array(0, np.int8))) == []
    assert [r for r, _ in _rules(qdq_graph(zero_point=np.array(3, np.int8)))] == ["qdq-zero-point"] * 2
    assert [r for r, _ in _rules(qdq_graph(zero_point=np.array(128, np.uint8)))] == ["qdq-zero-point"] * 2


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan")])
def test_scales_must_be_positive_and_finite(scale):
    assert {r for r, _ in _rules(qdq_graph(scale=scale, zero_point=np.array(0, np.int8)))} == {"qdq-scale"}


def test_fp16_scales_below_the_normal_range_are_flagged_and_kept_fp32_before_conversion():
    tiny = qdq_graph(scale=1e-5, zero_point=np.array(0, np.int8), scale_dtype=np.float16)
    findings = trt_rules.check_graph(tiny)
    assert [f.rule for f in findings] == ["fp16-scale", "fp16-scale"]
    assert "below FP16's smallest normal number 6.1e-05" in findings[0].message
    fp32 = qdq_graph(scale=1e-5, zero_point=np.array(0, np.int8))
    assert _rules(fp32) == []  # an FP32 scale of 1e-5 is fine
    assert trt_rules.small_fp16_scale_nodes(fp32) == ["act_q", "act_dq"]
    assert trt_rules.small_fp16_scale_nodes(qdq_graph(scale=1e-3, zero_point=np.array(0, np.int8))) == []


def test_unnamed_nodes_with_small_scales_get_a_name_the_converter_can_block():
    model = qdq_graph(scale=1e-6, zero_point=np.array(0, np.int8))
    for node in model.graph.node:
        node.name = ""
    assert trt_rules.small_fp16_scale_nodes(model) == ["QuantizeLinear(q)", "DequantizeLinear(dq)"]
    assert model.graph.node[0].name == "QuantizeLinear(q)"


def test_topk_above_3840_is_refused_with_what_to_change():
    assert _rules(qdq_graph(zero_point=np.array(0, np.int8), topk=8)) == []
    model = qdq_graph(zero_point=np.array(0, np.int8), topk=8)
    next(t for t in model.graph.initializer if t.name == "k").CopyFrom(
        numpy_helper.from_array(np.array([4096], np.int64), "k"))  # the top 1 % of a 640x640 map
    (finding,) = trt_rules.check_graph(model)
    assert finding.rule == "topk-k" and finding.node == "score_topk"
    assert "K = 4096 > 3840" in finding.message and "topk_fraction" in finding.message


def test_blocked_qdq_on_activations_is_refused():
    model = qdq_graph(scale=np.full((1, 2), 0.05), zero_point=np.zeros((1, 2), np.int8), block_size=4)
    assert {r for r, _ in _rules(model)} == {"blocked-qdq"}


def test_enforce_names_every_violation():
    model = qdq_graph(scale=0.0, zero_point=None)
    with pytest.raises(BundleError) as info:
        trt_rules.enforce(model)
    text = str(info.value)
    assert "breaks 4 of its ONNX parser's rules" in text
    assert "act_q: no zero point" in text and "[qdq-scale]" in text
    trt_rules.enforce(qdq_graph(zero_point=np.array(0, np.int8)))  # a clean graph passes


# ------------------------------------------------------------------ wired into the TensorRT preparation


def test_the_fixture_qdq_graph_prepares_clean():
    prepared, _ = prepare_graph(conv_graph(32, 32, qdq=True), [SOFTMAX_NODE])
    assert trt_rules.check_graph(prepared) == []


def test_preparation_makes_implied_zero_points_explicit_then_signed():
    model = conv_graph(32, 32, qdq=True)
    for node in model.graph.node:
        if node.name in ("in_q", "in_dq", "mid_q", "mid_dq"):
            del node.input[2]  # exporters that leave the zero point out: ONNX reads uint8 0
    prepared, report = prepare_graph(model, [SOFTMAX_NODE])
    assert trt_rules.check_graph(prepared) == []
    assert report.unsigned_to_int8 == 4
    assert any("4 Q/DQ nodes had no zero point" in w for w in report.warnings)


def test_preparation_keeps_q_dq_with_tiny_scales_fp32():
    model = conv_graph(32, 32, qdq=True)
    tiny = numpy_helper.from_array(np.array(1e-5, np.float32), "tiny_scale")
    model.graph.initializer.append(tiny)
    for node in model.graph.node:
        if node.name in ("mid_q", "mid_dq"):
            node.input[1] = "tiny_scale"
    prepared, report = prepare_graph(model, [SOFTMAX_NODE])
    assert {"mid_q", "mid_dq"} <= set(report.fp32_nodes)
    assert any("scales below FP16's normal range" in w for w in report.warnings)
    assert trt_rules.check_graph(prepared) == []
    scales = {t.name: t.data_type for t in prepared.graph.initializer}
    assert scales["tiny_scale"] == TensorProto.FLOAT


def test_preparation_refuses_topk_above_the_limit_on_the_cpu():
    with pytest.raises(BundleError, match=r"score_topk: K = 4096 > 3840.*\[topk-k\]"):
        prepare_graph(qdq_graph(zero_point=np.array(0, np.int8), topk=4096, width=5000))


def _set_w1_scale(model: onnx.ModelProto, scale: np.ndarray) -> None:
    init = next(t for t in model.graph.initializer if t.name == "w1_scale")
    init.CopyFrom(numpy_helper.from_array(scale.astype(np.float32), "w1_scale"))


def test_weight_scales_stay_fp16_so_the_convolution_keeps_its_int8_kernel():
    """A near-dead weight channel (scale 1e-5) must not pin the weights' DequantizeLinear FP32: TensorRT would then
    fold it into FP16 weights and run the whole convolution in FP16."""
    model = conv_graph(32, 32, qdq=True)
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1_scale")).copy()
    scale[0], scale[1] = 1e-5, 1e-9  # subnormal in FP16; 0 in FP16
    _set_w1_scale(model, scale)
    assert trt_rules.small_fp16_scale_nodes(model) == []  # weights are not activations
    prepared, report = prepare_graph(model, [SOFTMAX_NODE])
    assert "w1_dq" not in report.fp32_nodes
    assert any("1 weight channels had scales FP16 turns into 0" in w for w in report.warnings)
    assert trt_rules.check_graph(prepared) == []  # a subnormal FP16 weight scale is allowed, a zero one is not
    inits = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    assert inits["w1_scale"].dtype == np.float16 and inits["w1_scale"][1] > 0
    assert not inits["w1_int8"][1].any() and inits["w1_int8"][0].any()


def test_zeroing_vanishing_weight_channels_changes_the_onnx_result_by_less_than_their_weights():
    model = conv_graph(32, 32, qdq=True)
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1_scale")).copy()
    scale[2] = 2e-8
    _set_w1_scale(model, scale)
    image = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), np.uint8)

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["score"], {"image": image})[0]

    before = run(model)
    assert trt_rules.fit_weight_scales_to_fp16(model) == {"weight_channels_zeroed": 1,
                                                          "weight_channels_subnormal_fp16": 0}
    np.testing.assert_allclose(run(model), before, rtol=1e-5)
