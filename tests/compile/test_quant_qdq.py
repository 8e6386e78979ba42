"""QDQ export: graph structure (node types, dtypes, axes, zero points) and ONNX Runtime vs fake-quant torch parity."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edge_inspector.config import EngineSettings
from edge_inspector.engines.cpu_features import has_vnni
from edge_inspector.engines.ort import load_session
from edge_inspector.errors import ConfigError
from edge_inspector.bundle.graph_size import initializer_bytes
from edge_inspector.export.initializers import dedupe_initializers, narrow_index_initializers
from edge_inspector.export.qdq import METADATA_DISABLED_OPTIMIZERS, ORT_DISABLED_OPTIMIZERS, insert_qdq
from edge_inspector.quantization.qdq_bundle import conv_quant_from_module
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.quantization.activation_grids import mark_unsigned_activations, tie_activation_ranges
from edge_inspector.quantization.units import apply_plan, discover_units, quant_modules, set_mode, wrap_units
from tests.compile.quant_nets import make_tiny_net

PLAN = {"stem": "w8a8", "body.0": "w4a8", "body.2": "w8a8", "attn": "w4a8", "head": "w8a8"}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(fake-quant torch net, FP32 ONNX exported from it, calibration input)."""
    torch.set_num_threads(1)
    net = make_tiny_net(seed=1)
    fold_batchnorm(net, torch.randn(1, 3, 12, 12))
    units = discover_units(net)
    wrap_units(net, units)
    gen = torch.Generator().manual_seed(0)
    calib = torch.rand(4, 3, 12, 12, generator=gen) * 2 - 1
    # stem and body.0 are read only by a ReLU: their outputs, and the inputs reading those ReLUs, go unsigned
    assert mark_unsigned_activations(net, calib[:1]) == ["stem", "body.0"]
    set_mode(net, "calibrate")
    with torch.no_grad():
        net(calib)
    set_mode(net, "float")
    assert tie_activation_ranges(net, calib[:1]) == [
        ["body.0:in", "stem:out"], ["body.0:out", "body.2:in"], ["attn.to_kv:in", "attn.to_q:in"]]
    unsigned = {n: (m.in_observer.unsigned, m.out_observer.unsigned) for n, m in quant_modules(net).items()}
    assert unsigned == {"stem": (False, True), "body.0": (True, True), "body.2": (True, False),
                        "attn.to_q": (False, False), "attn.to_kv": (False, False), "attn.to_out": (False, False),
                        "head": (False, False)}
    path = tmp_path_factory.mktemp("qdq") / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (calib[:1],), str(path), dynamo=False, opset_version=21,
                          input_names=["x"], output_names=["y"])
    set_mode(net, "quant")
    apply_plan(net, units, PLAN)
    return net, onnx.load(str(path)), calib


def _qdq(net, fp32, small=False, activations="uint8"):
    convs = {n: conv_quant_from_module(m) for n, m in quant_modules(net).items()}
    return insert_qdq(fp32, convs, small=small, activations=activations)


def ort_session(model: onnx.ModelProto, optimize: bool = True):
    """The session the line's engine, calibrate and the benchmarks make (``engines.ort.load_session``), one thread."""
    settings = EngineSettings(intra_op_threads=1, graph_optimization="all" if optimize else "disable")
    return load_session(model, settings).session


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    return ort_session(model, optimize=optimize).run(None, {"x": x})[0]


def test_graph_structure(quantized):
    net, fp32, _ = quantized
    model = _qdq(net, fp32)
    ops = [n.op_type for n in model.graph.node]
    n_convs = 7
    assert ops.count("Conv") == n_convs
    # per conv: Q+DQ on input, DQ weight, Q+DQ on output; DQ bias where the conv has one (stem, body.0, body.2,
    # to_out, head after BN folding); to_q and to_kv read the same tensor on one grid: one shared input pair
    assert ops.count("QuantizeLinear") == 2 * n_convs - 1
    assert ops.count("DequantizeLinear") == 3 * n_convs + 5 - 1
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            codes, scale, zp = (inits[i] for i in node.input)
            axis = {a.name: a.i for a in node.attribute}.get("axis")
            assert axis == 0 and len(scale.dims) == 1 and scale.dims[0] == codes.dims[0]
            assert codes.data_type == zp.data_type
            assert not numpy_helper.to_array(zp).any()  # symmetric
            assert codes.data_type in (TensorProto.INT8, TensorProto.INT32)
        if node.op_type == "QuantizeLinear":
            zp = inits[node.input[2]]
            assert zp.data_type == TensorProto.UINT8 and len(zp.dims) == 0
    # activations: the symmetric grid in its uint8 form (zero point 128), or the unsigned grid (zero point 0) where
    # the conv's input / output is a ReLU's (see the fixture)
    producer = {o: n for n in model.graph.node for o in n.output}
    for name, module in quant_modules(net).items():
        conv = next(n for n in model.graph.node if n.op_type == "Conv"
                    and producer[n.input[1]].input[0] == f"{name}.conv.weight_quantized")
        x_q = producer[producer[conv.input[0]].input[0]]
        y_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
        for q, unsigned in ((x_q, module.in_observer.unsigned), (y_q, module.out_observer.unsigned)):
            assert numpy_helper.to_array(inits[q.input[2]]) == (0 if unsigned else 128), (name, q.name)
    w4 = numpy_helper.to_array(inits["body.0.conv.weight_quantized"])
    assert w4.dtype == np.int8 and np.abs(w4).max() == 7  # 4-bit grid in an INT8 container
    assert "body.0.conv.weight" not in inits  # the float weight is gone


def test_int4_storage_is_widened_on_load_and_runs_the_integer_kernels(quantized, tmp_path):
    import onnxruntime as ort

    from edge_inspector.engines.ort_rewrites import widen_int4_initializers

    net, fp32, x = quantized
    big, small = _qdq(net, fp32), _qdq(net, fp32, small=True)
    widened = onnx.ModelProto.FromString(small.SerializeToString())
    assert widen_int4_initializers(widened) > 0
    assert not any(t.data_type == TensorProto.INT4 for t in widened.graph.initializer)
    big_inits = {t.name: numpy_helper.to_array(t) for t in big.graph.initializer}
    for t in widened.graph.initializer:
        if t.name.endswith("_quantized"):
            np.testing.assert_array_equal(numpy_helper.to_array(t), big_inits[t.name])  # same codes, same dtype
    # the session load_session builds (what the line runs, calibrate and the benchmarks time) fuses them into QLinearConv
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(widened.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == sum(m.precision != "keep" for m in quant_modules(net).values())
    # body.0 -> ReLU -> body.2 is on one unsigned grid: the ReLU is gone (the two other ReLUs also feed adds)
    assert fused.count("Relu") == [n.op_type for n in widened.graph.node].count("Relu") - 1
    feed = {"x": x[:1].numpy()}
    np.testing.assert_allclose(ort_session(small).run(None, feed)[0], ort_session(big).run(None, feed)[0], atol=1e-6)


def test_small_bundle_uses_true_int4(quantized):
    net, fp32, _ = quantized
    big, small = _qdq(net, fp32), _qdq(net, fp32, small=True)
    inits = {t.name: t for t in small.graph.initializer}
    for name in ("body.0.conv.weight_quantized", "attn.to_q.conv.weight_quantized"):
        assert inits[name].data_type == TensorProto.INT4
    assert inits["stem.conv.weight_quantized"].data_type == TensorProto.INT8
    four_bit = [u for u in discover_units(net) if PLAN[u.name] == "w4a8"]
    zero_points = sum(quant_modules(net)[c].conv.out_channels for u in four_bit for c in u.convs)
    saved = (sum(u.params for u in four_bit) + zero_points) // 2  # codes and zero points both halve
    assert initializer_bytes(big) - initializer_bytes(small) == saved


@pytest.mark.parametrize("small,activations", [(False, "uint8"), (True, "uint8"), (False, "int8")])
def test_onnxruntime_matches_fake_quant_torch(quantized, small, activations):
    """Stated tolerance: every output within 2 output-quantization steps, 99% within 1 step.

    Here (x86 AVX2, ORT 1.32, U8S8 kernels, 8-bit weights in the reduced range) the outputs are identical; the margin is for
    integer kernels elsewhere that requantize with another fixed-point multiplier and round a boundary value the
    other way (each flip is one step of an 8-bit grid).
    """
    net, fp32, calib = quantized
    with torch.no_grad():
        ref = net(calib).numpy()
    step = quant_modules(net)["head"].act_scales().output
    for optimize in (True, False):  # integer kernels (fused) and the plain reference path of each op
        model = _qdq(net, fp32, small, activations)
        out = np.concatenate([_run(model, calib[i : i + 1].numpy(), optimize) for i in range(4)])
        diff = np.abs(out - ref) / step
        assert diff.max() <= 2.0 + 1e-3, diff.max()
        assert np.mean(diff > 1.0 + 1e-3) < 0.01


@pytest.mark.skipif(not has_vnni(), reason="full-range 8-bit weights are exact only on a CPU with VNNI (none here)")
def test_full_range_weights_are_exact_on_a_vnni_cpu(quantized):
    """Codes -127..127 (what ``targets.weight_range`` picks on a VNNI CPU): ONNX Runtime's integer kernels equal the
    fake-quant model as with the reduced range (same tolerance as above; seen: identical)."""
    net, fp32, calib = quantized
    modules = quant_modules(net).values()
    for module in modules:
        module.full_range = True
    try:
        with torch.no_grad():
            ref = net(calib).numpy()
        model = _qdq(net, fp32)
        codes = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "stem.conv.weight_quantized"]
        assert np.abs(codes[0]).max() == 127
        out = np.concatenate([_run(model, calib[i : i + 1].numpy()) for i in range(4)])
        diff = np.abs(out - ref) / quant_modules(net)["head"].act_scales().output
        assert diff.max() <= 2.0 + 1e-3 and np.mean(diff > 1.0 + 1e-3) < 0.01
    finally:
        for module in modules:
            module.full_range = False


def test_wrong_model_is_refused(quantized):
    net, fp32, _ = quantized
    convs = {n: conv_quant_from_module(m) for n, m in quant_modules(net).items()}
    convs["head"].reference = convs["head"].reference + 1.0
    with pytest.raises(ConfigError, match="differs"):
        insert_qdq(fp32, convs)
    with pytest.raises(ConfigError, match="not in the ONNX graph"):
        insert_qdq(fp32, {"nope": convs["stem"]})


def test_dedupe_initializers_keeps_results(quantized):
    net, fp32, calib = quantized
    model = _qdq(net, fp32)
    # duplicate the head weight codes under a new name, used by the head's weight DQ
    inits = {t.name: t for t in model.graph.initializer}
    copy = onnx.TensorProto()
    copy.CopyFrom(inits["head.conv.weight_quantized"])
    copy.name = "duplicate"
    model.graph.initializer.append(copy)
    for node in model.graph.node:
        if list(node.input[:1]) == ["head.conv.weight_quantized"]:
            node.input[0] = "duplicate"
    before = _run(model, calib[:1].numpy())
    size = initializer_bytes(model)
    assert dedupe_initializers(model) >= 1
    assert initializer_bytes(model) < size
    assert "duplicate" not in {t.name for t in model.graph.initializer}
    np.testing.assert_array_equal(_run(model, calib[:1].numpy()), before)


def test_tensorrt_form_puts_every_activation_on_the_signed_int8_grid(quantized):
    from edge_inspector.engines.trt_prep import make_qdq_tensorrt_ready

    net, fp32, calib = quantized
    model = _qdq(net, fp32)
    x = calib[:1].numpy()
    reference = _run(model, x)
    qdq_zps = [n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               and len(n.input) > 2 and n.input[2].endswith(("in_zp", "out_zp"))]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n_unsigned = sum(int(inits[z] == 0) for z in qdq_zps)
    assert n_unsigned == 8  # Q+DQ of stem:out, body.0:in, body.0:out, body.2:in
    counts = make_qdq_tensorrt_ready(model)
    assert counts["unsigned_to_int8"] == n_unsigned and counts["uint8_to_int8"] > 0
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits[node.input[2]]
            assert zp.data_type in (TensorProto.INT8, TensorProto.INT4) and not numpy_helper.to_array(zp).any()
    # the signed grids are exact; the unsigned ones lose one bit: close to, not equal to, the ONNX Runtime form
    # the one inexact rewrite is said out loud when the graph is prepared for a TensorRT build
    from edge_inspector.engines.trt_prep import prepare_graph

    _, report = prepare_graph(_qdq(net, fp32), keep_fp32_nodes=[])
    assert report.unsigned_to_int8 == n_unsigned
    assert any("unsigned activation grid" in w and "7 bits" in w for w in report.warnings)
    model.metadata_props.add(key=METADATA_DISABLED_OPTIMIZERS, value=",".join(ORT_DISABLED_OPTIMIZERS))
    moved = _run(model, x)  # ONNX Runtime runs the int8 form only without that optimizer (see qdq.py)
    err = np.abs(moved - reference).max() / np.abs(reference).max()
    assert 0 < err < 0.05


def test_index_tables_narrow_to_int32_exactly():
    from onnx import helper

    indices = numpy_helper.from_array(np.array([[2, 0], [1, 1]], np.int64), "idx")
    other = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")  # a Reshape shape must stay int64
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["x", "idx"], ["g"], axis=1),
         helper.make_node("Reshape", ["g", "shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [indices, other])
    # the torch exporter records the tables' types in value_info too
    graph.value_info.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [2, 2]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = ort_session(model).run(None, {"x": x})[0]
    assert narrow_index_initializers(model) == 4 * 4
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"idx": TensorProto.INT32, "shape": TensorProto.INT64}
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # what FP16 preparation runs: types agree
    np.testing.assert_array_equal(ort_session(model).run(None, {"x": x})[0], before)


def test_residual_block_outputs_are_quantized_once_for_every_reader(tmp_path):
    """A block output that the next block's conv, its skip add and a side pool all read: one Q/DQ pair they all
    read (torch quantizes the block output itself), so ONNX Runtime runs the adds as integer QLinearAdd; ORT
    matches the fake-quant torch model."""
    import copy

    import onnxruntime as ort

    from edge_inspector.quantization.activation_grids import SharedInputQuant, share_input_grids
    from tests.compile.quant_nets import make_residual_chain

    torch.set_num_threads(1)
    net = make_residual_chain(seed=3)
    calib = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    units = discover_units(net)
    wrap_units(net, units)
    mark_unsigned_activations(net, calib[:1])
    set_mode(net, "calibrate")
    with torch.no_grad():
        net(calib)
    set_mode(net, "float")
    tie_activation_ranges(net, calib[:1])
    # blocks.0 and blocks.1 outputs have readers besides a conv; blocks.2's only reader is the head conv, and the
    # stem's output is a conv's, quantized where it is made
    with torch.no_grad():
        float_output = net(calib)
    assert share_input_grids(net, calib[:1]) == ["blocks.0", "blocks.1"]
    modules = quant_modules(net)
    assert [n for n, m in modules.items() if m.shares_input_grid] == ["blocks.1.expand", "blocks.2.expand"]
    path = tmp_path / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (calib[:1],), str(path), dynamo=False, opset_version=21,
                          input_names=["x"], output_names=["y"])
    set_mode(net, "quant")
    apply_plan(net, units, {u.name: "w8a8" for u in units})
    model = _qdq(net, onnx.load(str(path)))
    producer = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 4  # three skip adds and the side output
    for add in adds[1:3]:  # blocks.1 and blocks.2 read their input through its Q/DQ pair
        assert {producer[i].op_type for i in add.input} == {"DequantizeLinear"}
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    assert producer[pool.input[0]].op_type == "DequantizeLinear"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearAdd") >= 2 and fused.count("QLinearConv") == len(modules)
    with torch.no_grad():
        reference = net(calib).numpy()
    session = ort_session(model)
    got = np.concatenate([session.run(None, {"x": calib[i : i + 1].numpy()})[0] for i in range(len(calib))])
    step = float(modules["head"].out_observer.scale())
    # identical here; one output step of margin for other CPUs' kernels (a torch side that left the skip reads
    # unquantized was 2 steps off)
    assert np.abs(got - reference).max() <= step + 1e-6
    # a deep copy's hooks quantize on the copy's convs (what bench_hqs does with prepared scorers)
    twin = copy.deepcopy(net)
    hook = next(h for h in twin.blocks[0]._forward_hooks.values() if isinstance(h, SharedInputQuant))
    assert hook.readers == [quant_modules(twin)["blocks.1.expand"]]
    set_mode(net, "float")  # and outside quant mode the hooks change nothing
    with torch.no_grad():
        assert torch.equal(net(calib), float_output)
