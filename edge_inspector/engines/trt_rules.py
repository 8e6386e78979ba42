"""The TensorRT ONNX parser's documented rules, checked on the CPU before a build ever reaches the device.

Each rule marks a place where TensorRT would refuse the graph on the Jetson, after the preparation and minutes of
build time, or worse, accept it and compute something else:

* **Q/DQ zero points.** ONNX's default zero point (none given) is uint8 0, codes 0..255; TensorRT's importer reads
  a missing zero point as INT8, codes -128..127, so everything above 127 steps would clip. The preparation makes
  every implied zero point explicit in the type ONNX implies (``make_zero_points_explicit``); the unsigned-grid
  rewrite then moves uint8 ones to the signed grid. Left in a prepared graph: only int8 zeros (TensorRT quantizes
  symmetrically).
* **Q/DQ scales.** All positive and finite (the importer asserts "Scale coefficients must all be positive").
  FP16's smallest normal number is 6.1e-5; a smaller scale converted to FP16 loses precision, and below 6e-8 it
  becomes 0. Activation Q/DQ with such scales stay FP32 (``small_fp16_scale_nodes``; rare in trained models, and
  it can cost that tensor its INT8 fusion). Weight scales are another matter: a per-channel weight scale below
  6.1e-5 belongs to a channel whose weights are all below 0.008, and pinning its DequantizeLinear FP32 would cost
  the whole convolution its INT8 kernel. Those stay FP16 subnormal numbers (the FP16 check in ONNX Runtime measures
  their effect), except the ones FP16 would turn into 0: their channels' weights (all below 4e-6) become exact
  zeros on a positive scale (``fit_weight_scales_to_fp16``).
* **TopK.** K <= 3840 (TensorRT's TopK layer). A score that averages the top 1 % of a 640x640 map needs K = 4096.
* **Blocked Q/DQ.** TensorRT parses blocked quantization only for INT4 weights; the preparation folds constant
  blocked weights, so any left (on activations) is refused.

``enforce(prepared)`` raises one BundleError naming every violation, with what to change. Nothing here imports
TensorRT: the rules run in the normal test suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_inspector.engines.ort_rewrites import QDQ_OPS
from edge_inspector.errors import BundleError

FP16_SMALLEST_NORMAL = float(np.finfo(np.float16).tiny)
"""6.1035e-05."""
TOPK_MAX_K = 3840
"""TensorRT's TopK layer: k <= 3840 (operator reference, TopK)."""


@dataclass(frozen=True)
class RuleFinding:
    rule: str
    """'qdq-zero-point', 'qdq-scale', 'fp16-scale', 'topk-k', 'blocked-qdq'."""
    node: str
    message: str


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _attribute(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _has_zero_point(node: onnx.NodeProto) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _implied_zero_point_type(node: onnx.NodeProto, constants: dict, producers: dict) -> int | None:
    """The ONNX type of ``node``'s missing zero point: a Q's output type, a DQ's input type (None: unknown)."""
    if node.op_type == "QuantizeLinear":
        return _attribute(node, "output_dtype") or TensorProto.UINT8
    source = node.input[0]
    if source in constants:
        return onnx.helper.np_dtype_to_tensor_dtype(constants[source].dtype)
    producer = producers.get(source)
    if producer is not None and producer.op_type == "QuantizeLinear":
        if _has_zero_point(producer) and producer.input[2] in constants:
            return onnx.helper.np_dtype_to_tensor_dtype(constants[producer.input[2]].dtype)
        return _attribute(producer, "output_dtype") or TensorProto.UINT8
    return None


def make_zero_points_explicit(model: onnx.ModelProto) -> int:
    """Give every Q/DQ without a zero point an explicit zero initializer of the type ONNX implies (same values in
    ONNX; TensorRT would otherwise read it as int8), in place. Returns how many were uint8: the ones whose meaning
    TensorRT would have changed."""
    graph = model.graph
    constants = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    implied = [(n, _implied_zero_point_type(n, constants, producers))
               for n in graph.node if n.op_type in QDQ_OPS and not _has_zero_point(n) and n.input[1] in constants]
    unsigned = 0
    for node, dtype in implied:
        if dtype is None:
            continue
        zeros = np.zeros(constants[node.input[1]].shape, onnx.helper.tensor_dtype_to_np_dtype(dtype))
        name = f"{_label(node)}/zero_point"
        graph.initializer.append(numpy_helper.from_array(zeros, name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        unsigned += dtype == TensorProto.UINT8
    return unsigned


def small_fp16_scale_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the activation Q/DQ nodes whose constant scales FP16 cannot hold as normal numbers (to keep them
    FP32). Unnamed ones are named after their output first, so the FP16 converter's node block list can hold them."""
    constants = _constants(model.graph)
    small = []
    for node in model.graph.node:
        activation = node.op_type in QDQ_OPS and node.input[0] not in constants
        scale = constants.get(node.input[1]) if activation else None
        if scale is None or not np.any((np.abs(scale) > 0) & (np.abs(scale) < FP16_SMALLEST_NORMAL)):
            continue
        node.name = node.name or f"{node.op_type}({node.output[0]})"
        small.append(node.name)
    return small


def fit_weight_scales_to_fp16(model: onnx.ModelProto) -> dict[str, int]:
    """For DequantizeLinear nodes of constant weights, in place: channels whose scale FP16 would turn into 0 get
    zero codes on FP16's smallest normal scale (their weights are below 127 x 6e-8 = 4e-6). Returns how many channels
    were zeroed and how many keep an FP16-subnormal (less precise) scale."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    counts = {"weight_channels_zeroed": 0, "weight_channels_subnormal_fp16": 0}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        vanishing = (scale > 0) & (scale.astype(np.float16) == 0)
        counts["weight_channels_subnormal_fp16"] += int(np.sum((scale < FP16_SMALLEST_NORMAL) & ~vanishing))
        if not vanishing.any():
            continue
        codes = numpy_helper.to_array(inits[node.input[0]]).copy()
        if scale.ndim:  # per channel along ``axis``
            axis = _attribute(node, "axis", 1) % codes.ndim
            codes[(slice(None),) * axis + (vanishing,)] = 0
        else:
            codes[...] = 0
        scale = np.where(vanishing, np.float32(FP16_SMALLEST_NORMAL), scale).astype(np.float32)
        for name, value in ((node.input[0], codes), (node.input[1], scale)):
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
        counts["weight_channels_zeroed"] += int(vanishing.sum())
    return counts


@dataclass(frozen=True)
class Fp16ScaleFixes:
    fp32_nodes: list[str]
    """Activation Q/DQ nodes to keep FP32."""
    warnings: list[str]
    counts: dict[str, int]


def fit_scales_to_fp16(model: onnx.ModelProto) -> Fp16ScaleFixes:
    """Both scale rewrites above, in place, with the warnings they call for."""
    counts = fit_weight_scales_to_fp16(model)
    fp32_nodes = small_fp16_scale_nodes(model)
    warnings = []
    if counts["weight_channels_zeroed"]:
        warnings.append(f"{counts['weight_channels_zeroed']} weight channels had scales FP16 turns into 0 (all their "
                        "weights below 4e-6): set to exact zeros")
    if fp32_nodes:
        warnings.append(f"{len(fp32_nodes)} activation Q/DQ nodes have scales below FP16's normal range: kept FP32 "
                        f"behind Casts, which can cost their INT8 fusion: {', '.join(fp32_nodes[:5])}")
    return Fp16ScaleFixes(fp32_nodes, warnings, counts)


def _qdq_findings(node: onnx.NodeProto, constants: dict, producers: dict) -> list[RuleFinding]:
    label, findings = _label(node), []
    if not _has_zero_point(node):
        implied = _implied_zero_point_type(node, constants, producers)
        if implied != TensorProto.INT8:  # an implied int8 zero means the same to both
            findings.append(RuleFinding("qdq-zero-point", label, "no zero point: ONNX means "
                                        f"{'uint8 0' if implied == TensorProto.UINT8 else 'a zero of an unknown type'}"
                                        ", TensorRT reads int8"))
    elif node.input[2] in constants:
        zero_point = constants[node.input[2]]
        if zero_point.dtype != np.int8 or np.any(zero_point != 0):
            findings.append(RuleFinding("qdq-zero-point", label, f"zero point {zero_point.dtype} "
                                        f"{zero_point.ravel()[:3]}: TensorRT needs int8 zero points of 0"))
    scale = constants.get(node.input[1])
    if scale is not None:
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            findings.append(RuleFinding("qdq-scale", label, "scales must all be positive and finite"))
        elif scale.dtype == np.float16 and np.any(scale < FP16_SMALLEST_NORMAL) and node.input[0] not in constants:
            findings.append(RuleFinding("fp16-scale", label, f"FP16 scale {float(scale.min()):.3g} is below FP16's "
                                        f"smallest normal number {FP16_SMALLEST_NORMAL:.3g}: keep this node FP32"))
    if _attribute(node, "block_size"):
        findings.append(RuleFinding("blocked-qdq", label, "blocked quantization: TensorRT takes it only for INT4 "
                                    "weights (constant, folded by the preparation)"))
    return findings


def check_graph(model: onnx.ModelProto) -> list[RuleFinding]:
    """Every rule violation in a graph prepared for TensorRT (empty: the parser's documented rules hold)."""
    constants = _constants(model.graph)
    producers = {o: n for n in model.graph.node for o in n.output}
    findings: list[RuleFinding] = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            findings += _qdq_findings(node, constants, producers)
        elif node.op_type == "TopK" and len(node.input) > 1 and node.input[1] in constants:
            k = int(constants[node.input[1]].ravel()[0])
            if k > TOPK_MAX_K:
                findings.append(RuleFinding("topk-k", _label(node), (
                    f"K = {k} > {TOPK_MAX_K}, TensorRT's TopK limit: use a smaller score.topk_fraction (at most "
                    f"{TOPK_MAX_K} map cells), a smaller input, or score.aggregation 'max'/'mean', and re-export")))
    return findings


def enforce(model: onnx.ModelProto) -> None:
    """Raise BundleError naming every rule violation of a prepared graph (nothing reaches the device otherwise)."""
    findings = check_graph(model)
    if findings:
        lines = "\n".join(f"  - {f.node}: {f.message} [{f.rule}]" for f in findings)
        raise BundleError(f"the graph prepared for TensorRT breaks {len(findings)} of its ONNX parser's rules:\n{lines}")


def check_boundary(model: onnx.ModelProto) -> None:
    """Refuse a graph whose boundary TensorRT cannot take, before any build time is spent.

    TensorRT accepts a uint8 network input only when it goes straight into a Cast (see
    ``trt_prep.cast_uint8_inputs_first``), and the bundle contract wants float32 outputs.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for graph_input in model.graph.input:
        if graph_input.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        bad = [f"{n.name or '?'} ({n.op_type})" for n in consumers.get(graph_input.name, []) if n.op_type != "Cast"]
        if bad:
            raise BundleError(
                f"graph input '{graph_input.name}' is uint8 and feeds {bad}; TensorRT needs a uint8 input to go "
                "straight into a Cast. Re-export the graph with a Cast right after the input."
            )
    for graph_output in model.graph.output:
        if graph_output.type.tensor_type.elem_type != TensorProto.FLOAT:
            dtype = TensorProto.DataType.Name(graph_output.type.tensor_type.elem_type)
            raise BundleError(f"graph output '{graph_output.name}' is {dtype}; the bundle contract wants float32")
