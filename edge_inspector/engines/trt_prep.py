"""Prepare a bundle's graph for a strongly typed TensorRT build: precision lives in the graph, not in builder flags.

TensorRT 11 removed the FP16/INT8 builder flags and per-layer precision setters; a strongly typed network runs every
tensor in the type the graph gives it. So the float parts of the bundle graph are converted to FP16 here, except:

* nodes the manifest pins to FP32 (``quantization.keep_fp32_nodes``) and op types that must stay FP32 (Softmax:
  the attention path needs the range), which get Casts around them;
* Q/DQ pairs, which stay where they are (their scales become FP16, so a DequantizeLinear feeds an FP16 conv and
  TensorRT can fuse Q/DQ + conv into an INT8 kernel);
* the graph boundary: the uint8 image input stays uint8, and the float32 outputs stay float32 (a Cast at the end).

Before that, the parts TensorRT's parser refuses are rewritten into exact equivalents: the uint8 input's Cast moves
in front of any layout ops (torch exports ``image -> Transpose -> Cast``), INT32 bias DequantizeLinear nodes are
folded into float initializers, INT4 weights are widened to INT8 containers; asymmetric Q/DQ is refused. The one
rewrite that is not exact: activations on the unsigned grid (uint8, zero point 0: a ReLU's output, see
``quantization.fakequant``) go to the signed INT8 grid covering the same range, with twice the step (TensorRT has
no unsigned INT8); TensorRT fuses the ReLU into the conv itself.

The FP16 conversion itself is ONNX Runtime's maintained converter (``onnxruntime.transformers.float16``). The
prepared graph is checked with ``onnx.checker`` (full type inference); ``engines.fp16_check`` runs it in ONNX
Runtime on the CPU against the original. Nothing here imports TensorRT.

Entry point: ``prepare_graph`` (graph in, FP16 graph and ``PreparationReport`` out); ``prepare_bundle_graph`` does
it for a bundle's graph (FP32 pins from its manifest) and writes the result to a file.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_inspector.bundle.store import Bundle
from edge_inspector.engines import trt_rules
from edge_inspector.engines.ort_rewrites import (
    QDQ_OPS,
    default_opset,
    fold_blocked_weight_dq,
    widen_int4_initializers,
)
from edge_inspector.errors import BundleError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

DEFAULT_FP32_OP_TYPES = ("Softmax",)
"""Op types kept in FP32 on every build, whatever the manifest says."""
FP16_SCALE_OPSET = 19
"""First opset whose QuantizeLinear/DequantizeLinear accept FP16 scales."""
PREPARED_KEY = "edge_inspector.prepared_for"
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice")
"""Ops that only move uint8 values around, so a Cast may move in front of them."""


@dataclass
class PreparationReport:
    """What the preparation did, for the build log and the plan side-car."""

    opset: int
    converted_nodes: int
    """Nodes outside the FP32 pins: their float tensors are FP16 now."""
    fp32_nodes: list[str] = field(default_factory=list)
    """Names of nodes left in FP32 (pinned by the manifest or by op type)."""
    qdq_nodes: int = 0
    casts_added: int = 0
    inputs_cast_first: list[str] = field(default_factory=list)
    """uint8 inputs whose Cast was moved in front of the layout ops that came first."""
    bias_dq_folded: int = 0
    """INT32 bias DequantizeLinear nodes folded into float initializers."""
    int4_widened: int = 0
    """INT4 initializers widened to INT8 containers."""
    blocked_dq_folded: int = 0
    """Blocked (weight-only) DequantizeLinear nodes folded into float initializers."""
    uint8_to_int8: int = 0
    """uint8 zero-point-128 Q/DQ zero points rewritten as int8 zero point 0 (same grid)."""
    unsigned_to_int8: int = 0
    """Q/DQ on the unsigned grid moved to the signed INT8 grid of the same range (twice the step: not exact)."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "opset": self.opset, "converted_nodes": self.converted_nodes, "fp32_nodes": self.fp32_nodes,
            "qdq_nodes": self.qdq_nodes, "casts_added": self.casts_added,
            "inputs_cast_first": self.inputs_cast_first, "bias_dq_folded": self.bias_dq_folded,
            "int4_widened": self.int4_widened, "blocked_dq_folded": self.blocked_dq_folded,
            "uint8_to_int8": self.uint8_to_int8, "unsigned_to_int8": self.unsigned_to_int8,
            "warnings": self.warnings,
        }


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def cast_uint8_inputs_first(model: onnx.ModelProto) -> list[str]:
    """Move the uint8 -> float Cast to the very start when only layout ops (Transpose, Reshape...) come before it.

    TensorRT takes a uint8 network input only straight into a Cast; torch's exporter, though, writes
    ``image -> Transpose -> Cast``. Casting first is exact (0..255 are exact in FP16) and the original Cast becomes
    float -> float. Edits ``model`` in place and returns the inputs it rewired.

    Raises:
        BundleError: a uint8 input reaches something other than layout ops before its Cast.
    """
    graph = model.graph
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    rewired = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        direct = consumers.get(graph_input.name, [])
        if all(n.op_type == "Cast" for n in direct):
            continue
        chain, pending = set(), list(direct)
        while pending:
            node = pending.pop()
            if node.op_type == "Cast":
                continue
            if node.op_type not in LAYOUT_OPS or outputs.intersection(node.output):
                raise BundleError(
                    f"graph input '{graph_input.name}' is uint8 and reaches {node.name or '?'} ({node.op_type}) "
                    "before any Cast; TensorRT takes a uint8 input only straight into a Cast. Re-export the graph "
                    "with a Cast right after the input."
                )
            chain.update(node.output)
            for name in node.output:
                pending.extend(consumers.get(name, []))
        cast_out = f"{graph_input.name}_as_float"
        for node in direct:
            node.input[:] = [cast_out if name == graph_input.name else name for name in node.input]
        graph.node.insert(0, helper.make_node(
            "Cast", [graph_input.name], [cast_out], name=f"{graph_input.name}_cast_first", to=TensorProto.FLOAT
        ))
        # Types recorded for the layout ops' outputs are uint8 and now wrong; shape inference redoes them.
        kept = [v for v in graph.value_info if v.name not in chain]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        rewired.append(graph_input.name)
    return rewired


def _initializer_array(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    return None


def make_qdq_tensorrt_ready(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite the Q/DQ parts TensorRT cannot parse into equivalent ones it can; edits ``model`` in place.

    * ``DequantizeLinear`` of a constant INT32 bias (what ONNX Runtime's QDQ format and our HQS export write):
      TensorRT only dequantizes activation types, so the bias is folded into a float initializer (same values).
    * INT4 weight initializers: TensorRT takes INT4 only as weight-only MatMul/Gemm, never conv; the 4-bit codes
      are widened to INT8 containers (same grid, same values).
    * Blocked ``DequantizeLinear`` of a constant (the location head's INT8 precision factors, weight-only): TensorRT
      parses blocked quantization only for INT4 weights, so it is folded into a float initializer (same values;
      the FP16 conversion then stores it in half the FP32 bytes).

    Raises:
        BundleError: a Q/DQ with a non-zero or unsigned zero point (TensorRT quantization is symmetric INT8).
    """
    graph = model.graph
    blocked = fold_blocked_weight_dq(model)
    inits = {t.name: t for t in graph.initializer}
    counts = {"bias_dq_folded": 0, "int4_widened": 0, "blocked_dq_folded": blocked,
              "uint8_to_int8": _uint8_grid_to_int8(graph, inits),
              "unsigned_to_int8": _unsigned_grid_to_int8(graph, inits)}
    kept_nodes = []
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            kept_nodes.append(node)
            continue
        zero_point = _initializer_array(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is not None and (zero_point.dtype == np.uint8 or np.any(zero_point.astype(np.int64) != 0)):
            raise BundleError(
                f"{node.name or node.op_type}: zero point {zero_point.dtype} {zero_point.ravel()[:3]}…; TensorRT "
                "needs symmetric signed quantization (int8, zero point 0). Re-quantize symmetrically."
            )
        source = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and source is not None and source.data_type == TensorProto.INT32:
            codes = numpy_helper.to_array(source).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            if scale.ndim:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % codes.ndim
                scale = scale.reshape([-1 if d == axis else 1 for d in range(codes.ndim)])
            offset = zero_point.astype(np.float64) if zero_point is not None else 0.0
            graph.initializer.append(numpy_helper.from_array(((codes - offset) * scale).astype(np.float32), node.output[0]))
            counts["bias_dq_folded"] += 1
            continue
        kept_nodes.append(node)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    counts["int4_widened"] = widen_int4_initializers(model)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return counts


def _uint8_grid_to_int8(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> int:
    """Rewrite uint8 zero-point-128 Q/DQ (how HQS writes activations for ONNX Runtime's x86 kernels) as int8 zero
    point 0: the same grid shifted by 128, so the dequantized values are identical, in the form TensorRT takes."""
    zero_points = {n.input[2] for n in graph.node if n.op_type in QDQ_OPS and len(n.input) > 2 and n.input[2]}
    rewritten = 0
    for name in zero_points:
        tensor = inits.get(name)
        if tensor is None or tensor.data_type != TensorProto.UINT8:
            continue
        value = numpy_helper.to_array(tensor)
        if np.all(value == 128):
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(value.shape, np.int8), name))
            rewritten += 1
    return rewritten


def _unsigned_grid_to_int8(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> int:
    """Move Q/DQ on the unsigned grid (uint8 zero point 0, codes 0..255 x s) to int8 zero point 0 with scale
    ``s * 255 / 127``: the signed grid whose positive half covers the same range. Not exact (half the resolution);
    each node gets its own scale initializer, as a scale may be shared with a signed tensor of equal value."""
    rewritten = 0
    for node in graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        zero_point = inits.get(node.input[2])
        if zero_point is None or zero_point.data_type != TensorProto.UINT8:
            continue
        if not np.all(numpy_helper.to_array(zero_point) == 0):
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        tag = node.name or node.output[0]
        new_scale = numpy_helper.from_array((scale * np.float32(255 / 127)).astype(np.float32), f"{tag}/int8_scale")
        new_zp = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{tag}/int8_zp")
        graph.initializer.extend([new_scale, new_zp])
        inits[new_scale.name], inits[new_zp.name] = new_scale, new_zp
        node.input[1], node.input[2] = new_scale.name, new_zp.name
        rewritten += 1
    return rewritten


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after its producers (the converter appends its Casts at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            names = [n.name or n.op_type for n in pending[:5]]
            raise BundleError(f"graph has a cycle or dangling inputs around nodes {names}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _rewrite_warnings(implied_uint8: int, qdq_rewrites: dict, scale_warnings: list[str],
                      qdq_opset: int | None) -> list[str]:
    """What the preparation changed that the user should know (``qdq_opset``: the opset when the graph has Q/DQ)."""
    warnings = list(scale_warnings)
    if implied_uint8:
        warnings.append(f"{implied_uint8} Q/DQ nodes had no zero point (ONNX: uint8 0, which TensorRT would read as "
                        "int8): made explicit")
    if qdq_rewrites["unsigned_to_int8"]:
        warnings.append(
            f"{qdq_rewrites['unsigned_to_int8']} Q/DQ nodes on the unsigned activation grid (ReLU outputs) moved to "
            "the signed INT8 grid at twice the step: TensorRT has no unsigned INT8, so those activations get 7 bits "
            "(calibrate --target tensorrt writes signed grids only)"
        )
    if qdq_opset is not None and qdq_opset < FP16_SCALE_OPSET:
        warnings.append(
            f"opset {qdq_opset} < {FP16_SCALE_OPSET}: Q/DQ kept in FP32 behind Casts; export at opset >= "
            f"{FP16_SCALE_OPSET} so TensorRT can fuse them into INT8 kernels"
        )
    return warnings


def prepare_graph(
    model: onnx.ModelProto,
    keep_fp32_nodes: list[str] | tuple[str, ...] = (),
    keep_fp32_op_types: tuple[str, ...] = DEFAULT_FP32_OP_TYPES,
) -> tuple[onnx.ModelProto, PreparationReport]:
    """Return an FP16 copy of ``model`` for a strongly typed build, and what was done.

    Raises:
        BundleError: a pinned node does not exist, the graph boundary is not one TensorRT takes, or the prepared
            graph breaks a rule of TensorRT's ONNX parser (``trt_rules``).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model)
    rewired = cast_uint8_inputs_first(source)
    trt_rules.check_boundary(source)
    implied_uint8 = trt_rules.make_zero_points_explicit(source)  # before the unsigned-grid rewrite reads them
    qdq_rewrites = make_qdq_tensorrt_ready(source)
    scale_fixes = trt_rules.fit_scales_to_fp16(source)
    names = {n.name for n in model.graph.node}
    unknown = sorted(set(keep_fp32_nodes) - names)
    if unknown:
        raise BundleError(f"the manifest pins FP32 on nodes the graph does not have: {unknown}")
    opset = default_opset(model)
    qdq = sum(n.op_type in QDQ_OPS for n in source.graph.node)
    block_ops = set(keep_fp32_op_types)
    if qdq and opset < FP16_SCALE_OPSET:
        # FP16 scales need opset 19; older Q/DQ stay FP32 behind Casts, which can cost TensorRT its INT8 fusions.
        block_ops |= set(QDQ_OPS)
    warnings = _rewrite_warnings(implied_uint8, qdq_rewrites, scale_fixes.warnings, opset if qdq else None)
    fp32_names = {*keep_fp32_nodes, *scale_fixes.fp32_nodes}
    pinned = sorted(n.name or n.op_type for n in source.graph.node if n.name in fp32_names or n.op_type in block_ops)
    nodes_before = len(source.graph.node)
    # The exporter's value_info would keep FP16 types on tensors the converter leaves FP32 around pinned nodes
    # (onnx.checker then refuses the graph: "Inferred elem type differs"); it is optional, shapes are re-inferred.
    del source.graph.value_info[:]
    try:
        prepared = convert_float_to_float16(
            source, keep_io_types=True, op_block_list=sorted(block_ops),
            node_block_list=[*keep_fp32_nodes, *scale_fixes.fp32_nodes],
        )
    except Exception as exc:  # the converter raises plain Exceptions/asserts on graphs it cannot type
        raise BundleError(f"FP16 conversion failed: {exc}") from exc
    topological_sort(prepared.graph)
    prepared.metadata_props.add(key=PREPARED_KEY, value="tensorrt-strongly-typed-fp16")
    trt_rules.enforce(prepared)
    try:
        onnx.checker.check_model(prepared, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BundleError(f"the FP16-prepared graph fails onnx.checker: {exc}") from exc
    counts = Counter(n.op_type for n in prepared.graph.node)
    report = PreparationReport(
        opset=opset,
        converted_nodes=nodes_before - len(pinned),
        fp32_nodes=pinned,
        qdq_nodes=qdq,
        casts_added=len(prepared.graph.node) - nodes_before,
        inputs_cast_first=rewired,
        bias_dq_folded=qdq_rewrites["bias_dq_folded"],
        int4_widened=qdq_rewrites["int4_widened"],
        blocked_dq_folded=qdq_rewrites["blocked_dq_folded"],
        uint8_to_int8=qdq_rewrites["uint8_to_int8"],
        unsigned_to_int8=qdq_rewrites["unsigned_to_int8"],
        warnings=warnings,
    )
    for warning in warnings:
        log.warning(warning)
    log.info("graph prepared for TensorRT", extra=kv(casts=counts.get("Cast", 0), **scale_fixes.counts, **report.to_dict()))
    return prepared, report


def prepare_bundle_graph(
    bundle: Bundle, out_path: str | Path, keep_fp32_op_types: tuple[str, ...] = DEFAULT_FP32_OP_TYPES
) -> PreparationReport:
    """Prepare ``bundle``'s graph (pins from its manifest) and save it to ``out_path``."""
    try:
        model = onnx.load(str(bundle.onnx_path))
    except Exception as exc:  # DecodeError, OSError...
        raise BundleError(f"{bundle.onnx_path} is not a readable ONNX model: {exc}") from exc
    prepared, report = prepare_graph(model, bundle.manifest.quantization.keep_fp32_nodes, keep_fp32_op_types)
    onnx.save(prepared, str(out_path))
    return report

