"""Turn an FP32 ONNX graph into the QDQ graph the line runs, using the fake-quant torch model's own numbers.

How the QDQ graph is produced (decision): we export the FP32 graph once (the same exporter as the FP32 bundle)
and insert ``QuantizeLinear`` / ``DequantizeLinear`` around each quantized ``Conv``, finding the conv by its weight
initializer, which the exporter names after the torch parameter (``<module>.weight``). Why not export the fake-quant
model directly: the torch exporters refuse a (-8, 7) fake-quant range, they would need custom symbolics for int32
bias grids and per-channel INT4, and every rewrite we would do afterwards (INT4 containers, axes, zero-point dtypes)
is easier to check on the ONNX graph. Scales and integer codes come from the torch wrappers, so ONNX Runtime sees
exactly the grid the fake-quant model was calibrated and fine-tuned on.

Per quantized conv the graph becomes::

    x -> Q(s_in) -> DQ -> Conv(DQ(w_int, s_w, axis 0), DQ(b_int32, s_in*s_w, axis 0)) -> Q(s_out) -> DQ -> y

with symmetric grids: weights int8/int4 with zero point 0; signed activations uint8 with zero point 128 (by default,
see ``ORT_DISABLED_OPTIMIZERS``) or int8 with zero point 0; activations on the unsigned grid (after a ReLU, see
``quantization.fakequant``) uint8 with zero point 0, which lets ONNX Runtime drop the ReLU's Clip between convs. A tensor already on a grid (a quantized conv's output read
by the next conv, one input read by q/k/v) is quantized once; where the torch side quantizes a conv input for all
its readers (``ConvQuant.input_shared``: a residual block's output, read by the skip add too), every reader reads
that one DQ. ONNX Runtime fuses ``DQ -> Conv -> Q`` into an
integer ``QLinearConv``. 4-bit weights are written as their 4-bit grid in INT8 containers (runs as INT8 everywhere), or as
true ``INT4`` initializers when ``small=True`` (opset >= 21; half the bytes). The engines widen INT4 back into INT8
containers when they load a graph (``engines.ort_rewrites.widen_int4_initializers``), so both forms run the same
integer kernels; ONNX Runtime left to itself would dequantize INT4 weights and run a float conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.engines.ort_rewrites import METADATA_DISABLED_OPTIMIZERS
from edge_inspector.errors import ConfigError

QDQ_OPSET = 21
ORT_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)
"""ONNX Runtime optimizers the *int8* form must be loaded without (written to its metadata_props; the default uint8
form needs nothing).

Why uint8 is the default (measured here: x86 AVX2 without VNNI, ORT 1.32): ORT rewrites int8 Q/DQ to uint8
(``QDQS8ToU8Transformer``) for its fast U8S8 kernels, but only some pairs, so convs whose input and output pairs
ended up with different types stayed float (47 of 90 on HaloAE-lite); and its ``QDQPropagationTransformer`` then
leaves opset-21 ``QuantizeLinear`` nodes with ``output_dtype`` INT8 beside a UINT8 zero point, so session creation
fails outright ("output_dtype INT8 does not match y_zero_point type UINT8", microsoft/onnxruntime#25526) wherever
a quantized conv feeds a Reshape/Slice. ``session.qdqisint8allowed=1`` avoids both but its S8S8 kernels were slower
than FP32 (500 vs 430 ms). Writing the same grid as uint8 with zero point 128 avoids all of it and stays exact.
"""
ACT_ZERO_POINTS = {"uint8": np.array(128, np.uint8), "int8": np.array(0, np.int8)}
"""Zero point of a signed activation grid, by the graph's activation form."""
UNSIGNED_ZERO_POINT = np.array(0, np.uint8)
"""Zero point of the unsigned activation grid (codes 0..255), in either form."""


@dataclass
class ConvQuant:
    """What the QDQ graph needs for one conv (``quantization.qdq_bundle.conv_quant_from_module`` reads it from a
    calibrated ``QuantConv2d``).

    Attributes:
        codes: integer weight codes (out, in/groups, kh, kw), within ``[-qmax, qmax]``.
        weight_scale: per-output-channel scales, float32 (out,).
        bits: 4 or 8.
        qmax: largest code of the symmetric weight grid the codes were rounded to.
        bias_codes: int32 bias codes on the grid ``input_scale * weight_scale``, or None.
        input_scale / output_scale: per-tensor 8-bit activation scales.
        input_unsigned / output_unsigned: that activation is on the unsigned grid (uint8, zero point 0).
        reference: the float weight the exporter wrote (used only to check we found the right conv).
    """

    codes: np.ndarray
    weight_scale: np.ndarray
    bits: int
    qmax: int
    bias_codes: np.ndarray | None
    input_scale: float
    output_scale: float
    reference: np.ndarray | None = None
    input_unsigned: bool = False
    output_unsigned: bool = False
    input_shared: bool = False
    """Every other reader of the conv's input reads its dequantized copy too (``activation_grids.SharedInputQuant``)."""


def _scalar(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def insert_qdq(
    model: onnx.ModelProto,
    convs: dict[str, ConvQuant],
    small: bool = False,
    check_reference: bool = True,
    activations: str = "uint8",
) -> onnx.ModelProto:
    """Return a copy of ``model`` with Q/DQ inserted around every conv whose weight is named in ``convs``.

    Args:
        convs: torch conv name (``encoder.0.proj``) -> its quantization; the ONNX weight initializer may be named
            ``<name>.weight`` or ``<name>.conv.weight`` (exported with the wrappers in place).
        small: write 4-bit weights as true INT4 initializers (needs opset >= 21).
        check_reference: refuse when the graph's float weight differs from the torch weight (wrong model).
        activations: ``uint8`` (zero point 128) or ``int8`` (zero point 0): the same symmetric grid. uint8 is
            what ONNX Runtime's x86 kernels run; int8 is what TensorRT takes (``engines.trt_prep`` converts).

    Raises:
        ConfigError: a named conv is not in the graph, its weight differs, or INT4 is asked below opset 21.
    """
    if activations not in ACT_ZERO_POINTS:
        raise ConfigError(f"activations must be one of {sorted(ACT_ZERO_POINTS)}, got {activations!r}")
    if small and _opset(model) < QDQ_OPSET:
        raise ConfigError(f"true INT4 weights need opset >= {QDQ_OPSET}; the graph has opset {_opset(model)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    by_weight = _conv_weights(convs, inits)
    new_nodes, new_inits, dropped, seen = [], [], set(), set()
    # (tensor, scale, unsigned) -> name of its dequantized copy: a tensor already on that grid is not quantized again
    on_grid: dict[tuple[str, float, bool], str] = {}
    shared: dict[str, str] = {}  # float tensor -> its dequantized copy, which all its readers then read
    for node in graph.node:
        weight = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight not in by_weight:
            new_nodes.append(node)
            continue
        name = by_weight[weight]
        seen.add(name)
        q = convs[name]
        if check_reference:
            _check_reference(name, q, inits[weight])
        dropped.update(i for i in node.input[1:3] if i)  # the float weight and bias
        x = node.input[0]
        pre, post, inits_ = _conv_qdq(node, node.name or name, weight, q, small, on_grid, ACT_ZERO_POINTS[activations])
        new_nodes += pre + [node] + post
        new_inits += inits_
        if q.input_shared:
            shared[x] = node.input[0]
    if set(convs) - seen:
        raise ConfigError(f"convs not used by any Conv node: {sorted(set(convs) - seen)}")
    if shared:
        new_nodes = _read_shared_inputs(new_nodes, shared, {i.name for i in graph.input} |
                                        {t.name for t in new_inits} | {t.name for t in graph.initializer})
    still_used = {i for n in new_nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if activations == "int8":
        _set_metadata(out, METADATA_DISABLED_OPTIMIZERS, ",".join(ORT_DISABLED_OPTIMIZERS))
    onnx.checker.check_model(out)
    return out


def _conv_weights(convs: dict[str, ConvQuant], inits: dict[str, TensorProto]) -> dict[str, str]:
    """Weight initializer name -> torch conv name, for every conv in ``convs``.

    Raises:
        ConfigError: a conv has no weight initializer in the graph.
    """
    by_weight: dict[str, str] = {}
    for name in convs:
        found = [w for w in (f"{name}.weight", f"{name}.conv.weight") if w in inits]
        if not found:
            raise ConfigError(f"conv '{name}' is not in the ONNX graph (no initializer {name}.weight)")
        by_weight[found[0]] = name
    return by_weight


def _check_reference(name: str, q: ConvQuant, weight: TensorProto) -> None:
    """Refuse a graph whose float weight is not the torch model's (another model, or a BatchNorm folded differently)."""
    if q.reference is None:
        return
    current = numpy_helper.to_array(weight)
    if current.shape != q.reference.shape or not np.allclose(current, q.reference, rtol=1e-4, atol=1e-6):
        raise ConfigError(
            f"conv '{name}': the graph's weight differs from the torch model's (not the same model, or a "
            "BatchNorm folded differently); export the FP32 graph from the model being quantized"
        )


def _read_shared_inputs(nodes: list[onnx.NodeProto], shared: dict[str, str], available: set[str]) -> list[onnx.NodeProto]:
    """Point every reader of a shared conv input at its dequantized copy (except the Q that quantizes it), then
    reorder: a reader that came before the conv now waits for the conv's Q/DQ pair."""
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] in shared:
            continue
        for i, name in enumerate(node.input):
            if name in shared:
                node.input[i] = shared[name]
    return _topological(nodes, available)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every input exists before its reader, otherwise keeping their order."""
    available = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = next((n for n in pending if all(i in available for i in n.input)), None)
        if ready is None:
            raise ConfigError(f"the QDQ graph has a cycle or an undefined input at {pending[0].name}")
        pending.remove(ready)
        ordered.append(ready)
        available.update(ready.output)
    return ordered


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _conv_qdq(
    node: onnx.NodeProto,
    tag: str,
    weight: str,
    q: ConvQuant,
    small: bool,
    on_grid: dict[tuple[str, float, bool], str],
    act_zp: np.ndarray,
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], list[TensorProto]]:
    """Nodes before the conv, nodes after it, and new initializers; rewires ``node`` in place."""
    x, y = node.input[0], node.output[0]
    p = f"{tag}/qdq"
    in_zp = UNSIGNED_ZERO_POINT if q.input_unsigned else act_zp
    out_zp = UNSIGNED_ZERO_POINT if q.output_unsigned else act_zp
    inits = [
        _scalar(f"{p}/out_scale", q.output_scale),
        numpy_helper.from_array(out_zp, f"{p}/out_zp"),
    ]
    pre = []
    x_dq = on_grid.get((x, q.input_scale, q.input_unsigned))
    if x_dq is None:  # not already the output of a Q/DQ pair on this grid: quantize it here
        x_dq = f"{p}/x_dq"
        inits += [_scalar(f"{p}/in_scale", q.input_scale), numpy_helper.from_array(in_zp, f"{p}/in_zp")]
        pre += [
            helper.make_node("QuantizeLinear", [x, f"{p}/in_scale", f"{p}/in_zp"], [f"{p}/x_q"], name=f"{p}/x_Q"),
            helper.make_node("DequantizeLinear", [f"{p}/x_q", f"{p}/in_scale", f"{p}/in_zp"], [x_dq],
                             name=f"{p}/x_DQ"),
        ]
        on_grid[(x, q.input_scale, q.input_unsigned)] = x_dq
    if np.abs(q.codes).max(initial=0) > q.qmax:
        raise ConfigError(f"{tag}: weight codes exceed the {q.bits}-bit grid (|code| <= {q.qmax})")
    channels = q.codes.shape[0]
    if small and q.bits == 4:
        codes = numpy_helper.from_array(q.codes.astype(ml_dtypes.int4), f"{weight}_quantized")
        w_zp = numpy_helper.from_array(np.zeros(channels, ml_dtypes.int4), f"{p}/w_zp")
    else:
        codes = numpy_helper.from_array(q.codes.astype(np.int8), f"{weight}_quantized")
        w_zp = numpy_helper.from_array(np.zeros(channels, np.int8), f"{p}/w_zp")
    inits += [codes, numpy_helper.from_array(q.weight_scale.astype(np.float32), f"{p}/w_scale"), w_zp]
    pre.append(helper.make_node("DequantizeLinear", [codes.name, f"{p}/w_scale", f"{p}/w_zp"], [f"{p}/w_dq"],
                                name=f"{p}/w_DQ", axis=0))
    inputs = [x_dq, f"{p}/w_dq"]
    if q.bias_codes is not None:
        b_scale = np.float32(q.input_scale) * q.weight_scale.astype(np.float32)
        inits += [
            numpy_helper.from_array(q.bias_codes.astype(np.int32), f"{p}/b_quantized"),
            numpy_helper.from_array(b_scale.astype(np.float32), f"{p}/b_scale"),
            numpy_helper.from_array(np.zeros(channels, np.int32), f"{p}/b_zp"),
        ]
        pre.append(helper.make_node("DequantizeLinear", [f"{p}/b_quantized", f"{p}/b_scale", f"{p}/b_zp"],
                                    [f"{p}/b_dq"], name=f"{p}/b_DQ", axis=0))
        inputs.append(f"{p}/b_dq")
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = f"{p}/y_float"
    post = [
        helper.make_node("QuantizeLinear", [f"{p}/y_float", f"{p}/out_scale", f"{p}/out_zp"], [f"{p}/y_q"],
                         name=f"{p}/y_Q"),
        helper.make_node("DequantizeLinear", [f"{p}/y_q", f"{p}/out_scale", f"{p}/out_zp"], [y], name=f"{p}/y_DQ"),
    ]
    on_grid[(y, q.output_scale, q.output_unsigned)] = y
    return pre, post, inits


def blocked_int8_weight(model: onnx.ModelProto, name: str, codes: np.ndarray, scales: np.ndarray, axis: int) -> None:
    """Replace the float initializer ``name`` by INT8 ``codes`` and a blocked ``DequantizeLinear`` (opset 21).

    ``scales`` has the shape of ``codes`` with ``axis`` reduced to 1: one scale per block along ``axis`` (the whole
    axis is one block). Weight-only: the consumer still runs in float, the file stores a quarter of the bytes.
    """
    init = next((i for i in model.graph.initializer if i.name == name), None)
    if init is None:
        raise ConfigError(f"no initializer {name!r} in the graph")
    if list(init.dims) != list(codes.shape):
        raise ConfigError(f"{name}: graph holds {list(init.dims)}, codes are {list(codes.shape)}")
    model.graph.initializer.remove(init)
    model.graph.initializer.extend([numpy_helper.from_array(codes.astype(np.int8), f"{name}_int8"),
                                    numpy_helper.from_array(scales.astype(np.float32), f"{name}_scale")])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name],
                                                name=f"{name}_dq", axis=axis, block_size=int(codes.shape[axis])))


def quantize_matmul_input(model: onnx.ModelProto, weight: str, scale: float, activations: str = "uint8") -> None:
    """Put the data input of the MatMul that reads ``weight`` on the signed 8-bit grid of step ``scale``: a
    ``QuantizeLinear -> DequantizeLinear`` pair in front of it, in place.

    With a blocked INT8 ``weight`` (``blocked_int8_weight``) the MatMul is then integer on both sides, which ONNX
    Runtime's loader runs as ``MatMulInteger`` (``engines.ort_rewrites.integer_matmuls``).
    """
    if activations not in ACT_ZERO_POINTS:
        raise ConfigError(f"activations must be one of {sorted(ACT_ZERO_POINTS)}, got {activations!r}")
    matmul = next((n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == weight), None)
    if matmul is None:
        raise ConfigError(f"no MatMul reads {weight!r}")
    x, p = matmul.input[0], f"{weight}/input"
    model.graph.initializer.extend([_scalar(f"{p}_scale", scale),
                                    numpy_helper.from_array(ACT_ZERO_POINTS[activations], f"{p}_zp")])
    at = list(model.graph.node).index(matmul)
    model.graph.node.insert(at, helper.make_node("DequantizeLinear", [f"{p}_q", f"{p}_scale", f"{p}_zp"], [f"{p}_dq"],
                                                 name=f"{p}_DQ"))
    model.graph.node.insert(at, helper.make_node("QuantizeLinear", [x, f"{p}_scale", f"{p}_zp"], [f"{p}_q"],
                                                 name=f"{p}_Q"))
    matmul.input[0] = f"{p}_dq"
