"""What TensorRT made of the graph: per-layer precision and tactic, and whether the Q/DQ nodes were fused.

A strongly typed network fixes tensor types, but TensorRT still chooses each layer's kernel; the only proof that the
INT8 convolutions of an HQS bundle run as INT8 kernels is the built engine's own description. Built with
``ProfilingVerbosity.DETAILED``, ``ICudaEngine.create_engine_inspector().get_engine_information(
LayerInformationFormat.JSON)`` lists every engine layer: its name (the fused ONNX nodes joined by ' + '), type,
tactic, optional metadata ('[ONNX Layer: conv1]' per fused node) and the format/datatype of its inputs and outputs
('Thirty-two wide channel vectorized row major Int8 format', 'Row major linear FP16 format', ...). This module
turns that JSON into the side-car's table and counts. It is pure (no TensorRT), so it is tested on the CPU.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import onnx

from edge_inspector.engines.ort_rewrites import QDQ_OPS

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
# (precision, words that name it in a 'Format/Datatype' text); uint8 before int8, which it contains.
_PRECISION_WORDS = (
    ("UINT8", ("uint8",)), ("INT8", ("int8",)), ("FP16", ("fp16", "half")), ("BF16", ("bf16",)),
    ("INT32", ("int32",)), ("INT64", ("int64",)), ("BOOL", ("bool",)), ("FP32", ("fp32", "float")),
)


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    precision: str
    """Of the layer's first input (what a convolution computes in), else of its first output; 'unknown' without
    DETAILED profiling verbosity or with dynamic shapes."""
    tactic: str
    onnx_nodes: tuple[str, ...]
    convolution: bool

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["onnx_nodes"] = list(self.onnx_nodes)
        return row


def tensor_precision(format_text: str) -> str:
    """'Thirty-two wide channel vectorized row major Int8 format' -> 'INT8'."""
    text = format_text.lower()
    return next((name for name, words in _PRECISION_WORDS if any(w in text for w in words)), "unknown")


def _layer(raw: dict[str, Any] | str) -> EngineLayer:
    if isinstance(raw, str):  # built without DETAILED verbosity: names only
        return EngineLayer(raw, "", "unknown", "", tuple(raw.split(" + ")), False)
    tensors = [*raw.get("Inputs", []), *raw.get("Outputs", [])]
    formats = [str(t.get("Format/Datatype", "")) for t in tensors if isinstance(t, dict)]
    precision = next((p for p in map(tensor_precision, formats) if p != "unknown"), "unknown")
    name = str(raw.get("Name", ""))
    nodes = tuple(_ONNX_LAYER.findall(str(raw.get("Metadata", "")))) or tuple(name.split(" + "))
    layer_type = str(raw.get("LayerType", ""))
    convolution = raw.get("ParameterType") == "Convolution" or "convolution" in layer_type.lower()
    tactic = str(raw.get("TacticName") or raw.get("TacticValue") or "")
    return EngineLayer(name, layer_type, precision, tactic, nodes, convolution)


def parse_engine_information(info: str | dict[str, Any]) -> list[EngineLayer]:
    """The layers of an engine inspector's JSON answer (a string or the parsed object)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    return [_layer(raw) for raw in layers]


def quantized_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose input and weights both come from a DequantizeLinear: the ones that should
    become INT8 kernels."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[0] in dequantized and n.input[1] in dequantized]


def qdq_node_names(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node if n.op_type in QDQ_OPS and n.name}


def summarize(layers: list[EngineLayer], qdq_nodes: set[str], quantized_convs: list[str]) -> dict[str, Any]:
    """Convolutions per precision, Q/DQ layers left on their own, and the graph's quantized convolutions."""
    convolutions = Counter(layer.precision for layer in layers if layer.convolution)
    unfused = [layer.name for layer in layers if layer.onnx_nodes and set(layer.onnx_nodes) <= qdq_nodes]
    return {
        "layers": len(layers),
        "convolutions": dict(sorted(convolutions.items())),
        "quantized_convolutions_in_graph": len(quantized_convs),
        "unfused_qdq_layers": unfused,
    }


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    """What the build should warn about: INT8 that did not happen."""
    warnings = []
    unfused = summary["unfused_qdq_layers"]
    if unfused:
        shown = ", ".join(unfused[:5]) + (" ..." if len(unfused) > 5 else "")
        warnings.append(f"{len(unfused)} Q/DQ layers were not fused into a neighbouring layer and run as separate "
                        f"(de)quantize kernels: {shown}")
    int8 = summary["convolutions"].get("INT8", 0)
    expected = summary["quantized_convolutions_in_graph"]
    if int8 < expected:
        warnings.append(f"the graph has {expected} convolutions behind Q/DQ but only {int8} run as INT8 kernels; "
                        "the rest run in higher precision (see engine_layers in the plan side-car)")
    return warnings


def summary_line(summary: dict[str, Any]) -> str:
    """'convolutions INT8 19, FP16 3 (19 quantized in the graph); unfused Q/DQ layers: none'."""
    counts = ", ".join(f"{p} {n}" for p, n in summary["convolutions"].items()) or "none"
    unfused = len(summary["unfused_qdq_layers"])
    return (f"convolutions {counts} ({summary['quantized_convolutions_in_graph']} quantized in the graph); "
            f"unfused Q/DQ layers: {unfused or 'none'}")
