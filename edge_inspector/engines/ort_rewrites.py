"""What a bundle graph needs before an ONNX Runtime session: exact rewrites that ONNX Runtime runs on faster kernels.

A bundle stores its graph small (4-bit weights as true INT4, the location head's factors as blocked INT8 weights);
the engines rewrite it when they load it, in memory, into forms with the same values that ONNX Runtime's CPU
kernels run as integer arithmetic:

* INT4 weight initializers widened to INT8 containers (same codes);
* ``MatMul(DQ(a), DQ_blocked(B))`` as ``MatMulInteger`` (the quantized location head, which ORT's QDQ fusion
  does not take);
* the remaining blocked weight-only ``DequantizeLinear`` nodes folded into float initializers.

The TensorRT preparation (``engines.trt_prep``) reuses the first and the last (TensorRT's parser needs them too)
and ``default_opset``.
A graph may also name ONNX Runtime optimizers to load it without (``METADATA_DISABLED_OPTIMIZERS``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.errors import BundleError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
METADATA_DISABLED_OPTIMIZERS = "edge_inspector.ort_disabled_optimizers"
"""Graph metadata key: ONNX Runtime optimizers to load the graph without (comma-separated; see
``export.qdq.ORT_DISABLED_OPTIMIZERS`` for the one graph form that needs it)."""


def default_opset(model: onnx.ModelProto, where: object = "the graph") -> int:
    """The graph's default-domain (``ai.onnx``) opset; ``where`` names it in the error."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    raise BundleError(f"{where} declares no default-domain opset")


def ort_disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """The ONNX Runtime optimizers ``model``'s metadata says to leave out when loading it."""
    meta = {p.key: p.value for p in model.metadata_props}
    return [o for o in meta.get(METADATA_DISABLED_OPTIMIZERS, "").split(",") if o]


def prepare_for_onnxruntime(model: onnx.ModelProto) -> dict[str, int]:
    """What a bundle graph needs before an ONNX Runtime CPU session, in place (same values, faster kernels):
    INT4 weights widened to INT8 containers, integer-on-both-sides MatMuls as ``MatMulInteger``, the remaining
    blocked weight-only DQs folded to float."""
    return {"int4_widened": widen_int4_initializers(model), "integer_matmuls": integer_matmuls(model),
            "blocked_dq_folded": fold_blocked_weight_dq(model)}


def widen_int4_initializers(model: onnx.ModelProto) -> int:
    """Rewrite the INT4 initializers that Q/DQ nodes read (codes and zero points) as INT8 containers, in place.

    Same codes, same dequantized values: a bundle stores 4-bit weights as true INT4 (half the bytes), and the engines
    widen them when they load the graph, because ONNX Runtime's CPU kernels and TensorRT's convolutions only run
    INT8 integer arithmetic (ONNX Runtime would otherwise dequantize INT4 weights and run a float conv). Returns how
    many initializers were widened.
    """
    read = {name for node in model.graph.node if node.op_type in QDQ_OPS for name in node.input[0::2]}
    widened = 0
    for tensor in model.graph.initializer:
        if tensor.name in read and tensor.data_type == TensorProto.INT4:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.int8), tensor.name))
            widened += 1
    return widened


def _block_size(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "block_size"), 0)


def _dequantized_blocks(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto:
    """The float initializer a blocked ``DequantizeLinear`` of constant codes computes (named as its output)."""
    codes = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero_point = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                  if len(node.input) > 2 and node.input[2] else None)
    block = _block_size(node)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % codes.ndim

    def per_element(blocks: np.ndarray) -> np.ndarray:
        return np.repeat(blocks, block, axis=axis)[tuple(slice(0, d) for d in codes.shape)]

    offset = per_element(zero_point) if zero_point is not None else 0.0
    return numpy_helper.from_array(((codes - offset) * per_element(scale)).astype(np.float32), node.output[0])


def fold_blocked_weight_dq(model: onnx.ModelProto) -> int:
    """Replace blocked ``DequantizeLinear`` nodes of constant codes (weight-only quantization: the location head's
    INT8 precision factors) by the float initializer they compute, in place; returns how many.

    ONNX Runtime keeps DequantizeLinear nodes out of constant folding (so QDQ fusion can see them) and would
    dequantize the 1 MB factor on every image (ORT profiler: about 0.6 ms of an 8 ms image); its consumer is a float
    MatMul either way, so the values are the same. The file keeps the small INT8 form. TensorRT preparation uses it
    too: TensorRT parses blocked quantization only for INT4 weights."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    folded = [n for n in graph.node if n.op_type == "DequantizeLinear" and _block_size(n) and n.input[0] in inits]
    for node in folded:
        graph.initializer.append(_dequantized_blocks(node, inits))
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for name in {i for node in folded for i in node.input} - used:
        graph.initializer.remove(inits[name])
    return len(folded)


def integer_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite ``MatMul(DQ(a), DQ_blocked(B))`` as ``MatMulInteger(a, B) -> Cast -> Mul(a_scale * B_scales)``, in
    place; returns how many.

    The pattern is the quantized location head (``model.location``): an 8-bit per-tensor input and constant INT8
    codes with one scale per output column and batch entry (one block over the whole reduction axis), which
    ONNX Runtime's QDQ fusion does not take. The integer matmul accumulates exactly in int32, and every output is
    its one sum times the product of the two scales: the values of the QDQ graph, up to float rounding.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    replaced: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type != "MatMul":
            continue
        a_dq, b_dq = producer.get(node.input[0]), producer.get(node.input[1])
        if not (_per_tensor_activation_dq(a_dq, inits) and _blocked_reduction_dq(b_dq, inits)):
            continue
        codes = numpy_helper.to_array(inits[b_dq.input[0]])
        a_scale = numpy_helper.to_array(inits[a_dq.input[1]]).astype(np.float64)
        b_scale = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64)
        p = node.name or node.output[0]
        graph.initializer.extend([
            numpy_helper.from_array(np.array(0, codes.dtype), f"{p}/b_zp"),
            numpy_helper.from_array((a_scale * b_scale).astype(np.float32), f"{p}/scale")])
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate([
            helper.make_node("MatMulInteger", [a_dq.input[0], b_dq.input[0], a_dq.input[2], f"{p}/b_zp"],
                             [f"{p}/int32"], name=f"{p}/integer"),
            helper.make_node("Cast", [f"{p}/int32"], [f"{p}/float"], to=TensorProto.FLOAT, name=f"{p}/cast"),
            helper.make_node("Mul", [f"{p}/float", f"{p}/scale"], [node.output[0]], name=f"{p}/rescale")]):
            graph.node.insert(at + offset, new)
        replaced += [a_dq, b_dq]
    _remove_unread(graph, replaced)
    return len(replaced) // 2


def _per_tensor_activation_dq(node: onnx.NodeProto | None, inits: dict[str, onnx.TensorProto]) -> bool:
    """A DequantizeLinear of a computed 8-bit tensor with one scale and an explicit zero point."""
    return (node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in inits
            and len(node.input) > 2 and node.input[1] in inits and node.input[2] in inits
            and not list(inits[node.input[1]].dims)
            and inits[node.input[2]].data_type in (TensorProto.UINT8, TensorProto.INT8))


def _blocked_reduction_dq(node: onnx.NodeProto | None, inits: dict[str, onnx.TensorProto]) -> bool:
    """A blocked DequantizeLinear of constant INT8 codes (..., K, N), zero point 0, with one block over all of K."""
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return False
    codes = inits[node.input[0]]
    rank = len(codes.dims)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(rank, 1)
    zero_point = (numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None)
    return (codes.data_type == TensorProto.INT8 and rank >= 2 and axis == rank - 2
            and _block_size(node) == codes.dims[axis] and (zero_point is None or not np.any(zero_point)))


def _remove_unread(graph: onnx.GraphProto, candidates: list[onnx.NodeProto]) -> None:
    """Drop the ``candidates`` whose outputs nobody reads any more, then the initializers only they read."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dropped = []
    for node in candidates:
        if node in graph.node and not any(o in read for o in node.output):
            graph.node.remove(node)
            dropped.append(node)
    read = {name for node in graph.node for name in node.input}
    inputs = {name for node in dropped for name in node.input}
    for tensor in [t for t in graph.initializer if t.name in inputs and t.name not in read]:
        graph.initializer.remove(tensor)
