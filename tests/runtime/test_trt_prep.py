"""FP16 preparation of bundle graphs for a strongly typed TensorRT build, checked on real ONNX graphs in ORT (CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.engines import trt_rules
from edge_inspector.engines.fp16_check import verify_prepared
from edge_inspector.engines.trt_prep import (
    PREPARED_KEY,
    prepare_bundle_graph,
    prepare_graph,
    topological_sort,
)
from edge_inspector.errors import BundleError
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.trt_graphs import SOFTMAX_NODE, conv_graph, make_conv_bundle


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (inputs, outputs, value_info, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.input, *inferred.graph.output)}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_fp32_graph_becomes_fp16_with_the_boundary_and_pins_kept():
    prepared, report = prepare_graph(conv_graph(16, 16, qdq=False), keep_fp32_nodes=[SOFTMAX_NODE])
    types = _types(prepared)
    assert types["image"] == TensorProto.UINT8
    assert types["anomaly_map"] == TensorProto.FLOAT and types["score"] == TensorProto.FLOAT
    assert types["w1"] == types["w2"] == TensorProto.FLOAT16
    assert _node(prepared, "cast_in").attribute[0].i == TensorProto.FLOAT16  # uint8 -> fp16 directly
    assert types[_node(prepared, "conv2").output[0]] == TensorProto.FLOAT16
    softmax = _node(prepared, SOFTMAX_NODE)
    assert types[softmax.input[0]] == types[softmax.output[0]] == TensorProto.FLOAT
    assert report.fp32_nodes == [SOFTMAX_NODE]
    assert report.casts_added == 4  # two around the softmax, one per output
    assert {p.key: p.value for p in prepared.metadata_props}[PREPARED_KEY] == "tensorrt-strongly-typed-fp16"


def test_qdq_graph_keeps_int8_weights_and_gets_fp16_scales():
    original = conv_graph(16, 16, qdq=True)
    prepared, report = prepare_graph(original, keep_fp32_nodes=[SOFTMAX_NODE])
    types = _types(prepared)
    before = {n.op_type for n in original.graph.node if n.op_type.endswith("Linear")}
    assert before == {"QuantizeLinear", "DequantizeLinear"}
    assert report.qdq_nodes == 5 and report.warnings == []
    assert sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in prepared.graph.node) == 5
    weights = {t.name: t for t in prepared.graph.initializer}
    assert weights["w1_int8"].data_type == TensorProto.INT8
    np.testing.assert_array_equal(
        numpy_helper.to_array(weights["w1_int8"]),
        numpy_helper.to_array(next(t for t in original.graph.initializer if t.name == "w1_int8")),
    )
    assert types["w1_scale"] == types["act_scale"] == TensorProto.FLOAT16
    # DequantizeLinear feeds the conv directly, so TensorRT can fuse Q/DQ + conv into one INT8 kernel.
    assert _node(prepared, "conv1").input[:2] == ["in_dq", "w1"]
    assert types["in_dq"] == types["w1"] == TensorProto.FLOAT16


def test_old_opset_qdq_stays_fp32_with_a_warning(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True, opset=18)
    out = tmp_path / "prepared.onnx"
    report = prepare_bundle_graph(bundle, out)
    assert report.warnings and "opset 18 < 19" in report.warnings[0]
    types = _types(onnx.load(str(out)))
    assert types["act_scale"] == TensorProto.FLOAT
    assert verify_prepared(bundle, out).passed


@pytest.mark.parametrize("qdq", [False, True])
def test_prepared_bundle_graph_runs_in_onnxruntime_within_tolerance(tmp_path, qdq):
    bundle = make_conv_bundle(tmp_path / "b", qdq=qdq)
    out = tmp_path / "prepared.onnx"
    prepare_bundle_graph(bundle, out)
    report = verify_prepared(bundle, out)
    assert report.passed, report.summary()
    assert report.n_images == 6
    drift = report.score_drift
    assert 0 < drift.max() < 1e-2  # really FP16 (not bit-identical), and close
    assert report.verdict_agreement == 1.0


def test_tiny_fixture_bundle_prepares_and_verifies(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny", width=32, height=32)
    out = tmp_path / "prepared.onnx"
    report = prepare_bundle_graph(bundle, out)
    assert report.fp32_nodes == []
    assert verify_prepared(bundle, out).passed


def test_softmax_is_fp16_only_when_nobody_pins_it():
    prepared, report = prepare_graph(conv_graph(16, 16, qdq=False), keep_fp32_op_types=())
    softmax = _node(prepared, SOFTMAX_NODE)
    assert _types(prepared)[softmax.input[0]] == TensorProto.FLOAT16
    assert report.fp32_nodes == [] and report.casts_added == 2


def test_verification_catches_a_graph_that_computes_something_else(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=False)
    impostor = tmp_path / "other.onnx"
    onnx.save(conv_graph(32, 32, qdq=False, seed=7), impostor)
    report = verify_prepared(bundle, impostor)
    assert not report.passed
    assert "exceeds the tolerance" in report.failures[0]


@pytest.mark.parametrize("qdq", [False, True])
def test_cast_moves_in_front_of_layout_ops_on_the_uint8_input(qdq):
    original = conv_graph(16, 16, qdq=qdq, transpose_first=True)
    with pytest.raises(BundleError, match="uint8 and feeds.*to_nchw"):
        trt_rules.check_boundary(original)
    original = onnx.shape_inference.infer_shapes(original)  # records a uint8 type for the transposed tensor
    prepared, report = prepare_graph(original, keep_fp32_nodes=[SOFTMAX_NODE])
    assert report.inputs_cast_first == ["image"]
    trt_rules.check_boundary(prepared)
    first = next(n for n in prepared.graph.node if "image" in n.input)
    assert first.op_type == "Cast" and first.attribute[0].i == TensorProto.FLOAT16
    types = _types(prepared)
    assert types["nchw_u8"] == types["nchw"] == TensorProto.FLOAT16


def test_transpose_first_bundle_still_matches_onnxruntime(tmp_path):
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    graph = tmp_path / "transpose_first.onnx"
    onnx.save(conv_graph(32, 32, qdq=True, transpose_first=True), graph)
    from edge_inspector.engines.fp16_check import bundle_with_graph

    exported_like_torch = bundle_with_graph(bundle, graph, tmp_path / "torch_like")
    out = tmp_path / "prepared.onnx"
    assert prepare_bundle_graph(exported_like_torch, out).inputs_cast_first == ["image"]
    report = verify_prepared(exported_like_torch, out)
    assert report.passed, report.summary()


def test_uint8_arithmetic_before_the_cast_is_refused():
    model = conv_graph(16, 16, qdq=False, transpose_first=True)
    first = model.graph.node[0]
    first.op_type, first.input[:] = "Max", ["image", "image"]
    del first.attribute[:]
    with pytest.raises(BundleError, match=r"reaches to_nchw \(Max\) before any Cast"):
        prepare_graph(model)


def test_int32_bias_and_int4_weights_become_what_tensorrt_parses(tmp_path):
    original = conv_graph(32, 32, qdq=True, int32_bias=True, int4_weights=True)
    prepared, report = prepare_graph(original, keep_fp32_nodes=[SOFTMAX_NODE])
    assert (report.bias_dq_folded, report.int4_widened) == (1, 2)  # the codes and their zero point
    inits = {t.name: t for t in prepared.graph.initializer}
    assert "b1_int32" not in inits and inits["b1"].data_type == TensorProto.FLOAT16
    assert inits["w1_int8"].data_type == inits["w1_zp"].data_type == TensorProto.INT8
    dq_sources = [inits[n.input[0]].data_type for n in prepared.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert dq_sources == [TensorProto.INT8]  # only the weight DQ is left on a constant, and it is INT8
    bundle = make_conv_bundle(tmp_path / "b", qdq=True)
    graph = tmp_path / "int4.onnx"
    onnx.save(original, graph)
    from edge_inspector.engines.fp16_check import bundle_with_graph

    int4_bundle = bundle_with_graph(bundle, graph, tmp_path / "int4")
    out = tmp_path / "prepared.onnx"
    prepare_bundle_graph(int4_bundle, out)
    assert verify_prepared(int4_bundle, out).passed


def test_uint8_zero_point_128_activations_become_int8_on_the_same_grid(tmp_path):
    """HQS bundles write activations as uint8 zero point 128 for ONNX Runtime; TensorRT gets int8 zero point 0."""
    import onnxruntime as ort

    model = conv_graph(16, 16, qdq=True)
    zp = next(t for t in model.graph.initializer if t.name == "act_zp")
    zp.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), "act_zp"))
    prepared, report = prepare_graph(model, keep_fp32_nodes=[SOFTMAX_NODE])
    assert report.uint8_to_int8 == 1
    assert next(t for t in prepared.graph.initializer if t.name == "act_zp").data_type == TensorProto.INT8
    image = np.random.default_rng(0).integers(0, 255, (1, 16, 16, 3), dtype=np.uint8)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": image})
               for m in (model, prepared)]
    np.testing.assert_allclose(outputs[1][1], outputs[0][1], rtol=2e-2)  # score: same grid, FP16 float parts


def test_asymmetric_quantization_is_refused():
    model = conv_graph(16, 16, qdq=True)
    zp = next(t for t in model.graph.initializer if t.name == "act_zp")
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "act_zp"))
    with pytest.raises(BundleError, match="in_q: zero point int8.*symmetric"):
        prepare_graph(model)


def test_unknown_pinned_node_is_refused():
    with pytest.raises(BundleError, match=r"does not have: \['attn_sofmax'\]"):
        prepare_graph(conv_graph(16, 16, qdq=False), keep_fp32_nodes=["attn_sofmax"])


def test_boundary_tensorrt_cannot_take_is_refused():
    model = conv_graph(16, 16, qdq=False)
    model.graph.node[0].op_type = "Identity"  # uint8 input no longer goes into a Cast
    del model.graph.node[0].attribute[:]
    with pytest.raises(BundleError, match="uint8 and feeds.*Identity"):
        trt_rules.check_boundary(model)
    model = conv_graph(16, 16, qdq=False)
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(BundleError, match="'score' is FLOAT16"):
        trt_rules.check_boundary(model)


def test_topological_sort_orders_and_detects_cycles():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["c"], name="second"), helper.make_node("Relu", ["a"], ["b"], name="first")],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second"]
    graph.node[0].input[0] = "c"
    with pytest.raises(BundleError, match="cycle or dangling"):
        topological_sort(graph)


def test_bundle_without_calibration_images_cannot_be_verified(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny", width=16, height=16, calibration_images=np.zeros((0, 16, 16, 3), np.uint8))
    out = tmp_path / "prepared.onnx"
    prepare_bundle_graph(bundle, out)
    with pytest.raises(BundleError, match="no calibration images"):
        verify_prepared(bundle, out)


def _blocked_factor_model(rng: np.random.Generator, code_max: int = 127) -> onnx.ModelProto:
    """uint8 image -> (4 cells, 1, 3) @ blocked-INT8 (4, 3, 3) factor -> sum: the location head's shape, small."""
    codes = rng.integers(-code_max, code_max + 1, (4, 3, 3)).astype(np.int8)
    scales = rng.uniform(0.01, 0.1, (4, 1, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["cells"]),
        helper.make_node("DequantizeLinear", ["f_int8", "f_scale"], ["f"], axis=1, block_size=3, name="f_dq"),
        helper.make_node("MatMul", ["cells", "f"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "blocked", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 2, 2, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(codes, "f_int8"), numpy_helper.from_array(scales, "f_scale"),
         numpy_helper.from_array(np.array([4, 1, 3], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_blocked_weight_only_dq_is_folded_to_float_for_tensorrt():
    """The location head's INT8 precision factors (blocked DequantizeLinear) become a float constant, same values."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    model = _blocked_factor_model(rng)
    prepared, report = prepare_graph(model, keep_fp32_nodes=[])
    assert report.blocked_dq_folded == 1
    assert not any(n.op_type == "DequantizeLinear" for n in prepared.graph.node)
    image = rng.integers(0, 255, (1, 2, 2, 3), dtype=np.uint8)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": image})
               for m in (model, prepared)]
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], rtol=2e-3)


def test_onnxruntime_preparation_folds_the_blocked_factor_exactly():
    """On the CPU the factor is dequantized once at load instead of on every image: bit-identical outputs."""
    import onnxruntime as ort

    from edge_inspector.engines.ort_rewrites import prepare_for_onnxruntime

    rng = np.random.default_rng(1)
    model = _blocked_factor_model(rng)
    folded = onnx.ModelProto.FromString(model.SerializeToString())
    assert prepare_for_onnxruntime(folded) == {"int4_widened": 0, "integer_matmuls": 0, "blocked_dq_folded": 1}
    assert [n.op_type for n in folded.graph.node] == ["Cast", "Reshape", "MatMul", "ReduceSum"]
    assert {t.name for t in folded.graph.initializer} == {"f", "shape"}  # codes and scales gone, float factor in
    image = rng.integers(0, 255, (1, 2, 2, 3), dtype=np.uint8)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": image})
               for m in (model, folded)]
    np.testing.assert_array_equal(outputs[1][0], outputs[0][0])


def _integer_head_model(rng: np.random.Generator) -> onnx.ModelProto:
    """The blocked factor model with its MatMul input on an 8-bit grid (uint8, zero point 128): the quantized head.
    Its factor codes are in the reduced range -63..63, as bundles calibrated for x86 CPUs without VNNI carry them:
    full-range codes saturate ONNX Runtime's u8s8 kernels there (``engines.cpu_features``) and this test would then
    measure the CPU, not the rewrite."""
    model = _blocked_factor_model(rng, code_max=63)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(0.8, np.float32), "a_scale"),
                              numpy_helper.from_array(np.array(128, np.uint8), "a_zp")])
    graph.node.insert(2, helper.make_node("QuantizeLinear", ["cells", "a_scale", "a_zp"], ["cells_q"]))
    graph.node.insert(3, helper.make_node("DequantizeLinear", ["cells_q", "a_scale", "a_zp"], ["cells_dq"]))
    next(n for n in graph.node if n.op_type == "MatMul").input[0] = "cells_dq"
    return model


def test_onnxruntime_runs_the_integer_head_as_matmulinteger():
    """Both MatMul inputs integer (8-bit input, blocked INT8 factor): ONNX Runtime's QDQ fusion leaves such a MatMul
    in float over a dequantized factor; the loader rewrites it to MatMulInteger -> Cast -> Mul, same values."""
    import onnxruntime as ort

    from edge_inspector.engines.ort_rewrites import prepare_for_onnxruntime

    rng = np.random.default_rng(3)
    model = _integer_head_model(rng)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert prepare_for_onnxruntime(rewritten) == {"int4_widened": 0, "integer_matmuls": 1, "blocked_dq_folded": 0}
    assert [n.op_type for n in rewritten.graph.node] == ["Cast", "Reshape", "QuantizeLinear", "MatMulInteger",
                                                         "Cast", "Mul", "ReduceSum"]
    names = {t.name for t in rewritten.graph.initializer}
    assert "f_int8" in names and "f_scale" not in names  # the codes run as they are; both scales are one Mul
    onnx.checker.check_model(rewritten, full_check=True)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ graph as written
    for image in rng.integers(0, 255, (4, 1, 2, 2, 3), dtype=np.uint8):
        want, got = (ort.InferenceSession(m.SerializeToString(), plain, providers=["CPUExecutionProvider"])
                     .run(None, {"image": image})[0] for m in (model, rewritten))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # TensorRT preparation keeps the input grid (signed) and folds the factor to float
    prepared, report = prepare_graph(_integer_head_model(np.random.default_rng(3)), keep_fp32_nodes=[])
    assert report.blocked_dq_folded == 1
    assert [n.op_type for n in prepared.graph.node].count("QuantizeLinear") == 1


def test_pins_work_on_graphs_that_carry_value_info():
    """The torch exporter records types in value_info, initializers' included; the FP16 converter left those FP16
    beside a pinned node that reads an initializer in FP32, and onnx.checker then refused the graph."""
    graph = onnx.shape_inference.infer_shapes(conv_graph(16, 16, qdq=True))
    graph.graph.value_info.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.graph.initializer)
    pinned = [n.name for n in graph.graph.node if n.op_type == "Mul" and any(
        i in {t.name for t in graph.graph.initializer} for i in n.input)]
    assert pinned  # a pinned node that reads a float initializer
    prepared, report = prepare_graph(graph, keep_fp32_nodes=pinned)
    types = _types(prepared)
    for node in prepared.graph.node:
        if node.name in pinned:
            assert types[node.output[0]] == TensorProto.FLOAT
    assert set(pinned) <= set(report.fp32_nodes)
