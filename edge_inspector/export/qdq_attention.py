"""Integer attention in the QDQ graph: both inputs of an attention block's activation x activation MatMuls (QK^T,
AV) on the 8-bit grids the fake-quant torch model used (``quantization.attention_quant``).

The MatMuls are found by the module scope the exporter (``torch.onnx.export(dynamo=True)``) records in each node's
metadata (``pkg.torch.onnx.name_scopes``: ``[..., 'model.encoder.0.attention', 'matmul']``), in graph order, and
only those whose inputs are both computed from the block's input (a MatMul reading a parameter, HaloAttention's
relative-position logits, stays float): the same rule, in the same order, as the torch side. Each input gets its
own ``QuantizeLinear -> DequantizeLinear`` pair right before the MatMul; another reader of the same tensor (the
relative-position MatMuls read q too) keeps reading the float tensor, as in torch.

What ONNX Runtime makes of it (ORT 1.32, CPU): ``DQ, DQ -> MatMul`` with a float output becomes
``MatMulIntegerToFloat`` (QK^T, which the float relative logits and the mask are added to), and with a quantized
reader after it ``QLinearMatMul``; TensorRT runs a MatMul between two Q/DQ inputs as an INT8 matmul.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_inspector.errors import ConfigError
from edge_inspector.export.qdq import ACT_ZERO_POINTS, UNSIGNED_ZERO_POINT

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class OperandGrid:
    """One MatMul input's per-tensor 8-bit grid: its step and whether it is the unsigned one (codes 0..255)."""

    scale: float
    unsigned: bool = False


@dataclass(frozen=True)
class MatmulQuant:
    """Both inputs' grids of one activation x activation MatMul."""

    a: OperandGrid
    b: OperandGrid


def _scopes(node: onnx.NodeProto) -> list[str]:
    value = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    return list(ast.literal_eval(value)) if value else []


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors computed from initializers and constants alone (a transposed parameter included)."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # graph order is topological
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)
    return constant


def activation_matmuls(model: onnx.ModelProto, block: str) -> list[onnx.NodeProto]:
    """The MatMul nodes inside module ``block`` (its qualified name) whose two inputs are both computed, in graph
    order."""
    constant = _constant_tensors(model.graph)
    return [n for n in model.graph.node if n.op_type == "MatMul" and block in _scopes(n)
            and not any(i in constant for i in n.input)]


def quantize_attention_matmuls(model: onnx.ModelProto, blocks: dict[str, list[MatmulQuant]],
                               activations: str = "uint8") -> int:
    """Put both inputs of each block's activation MatMuls on their grids (Q/DQ pairs), in place; returns how many
    MatMuls.

    Args:
        blocks: attention block name -> the grids of its activation MatMuls, in call order.
        activations: ``uint8`` (signed grid as zero point 128) or ``int8`` (zero point 0), as ``insert_qdq``.

    Raises:
        ConfigError: a block has another number of activation MatMuls in the graph than grids given (not the
            model the grids were calibrated on, or an exporter that records no scopes).
    """
    if activations not in ACT_ZERO_POINTS:
        raise ConfigError(f"activations must be one of {sorted(ACT_ZERO_POINTS)}, got {activations!r}")
    done = 0
    for block, grids in blocks.items():
        nodes = activation_matmuls(model, block)
        if len(nodes) != len(grids):
            raise ConfigError(f"attention block {block!r}: {len(nodes)} activation MatMuls in the graph, "
                              f"{len(grids)} calibrated (export the graph from the model that was calibrated)")
        for node, quant in zip(nodes, grids):
            for position, grid in enumerate((quant.a, quant.b)):
                _quantize_input(model, node, position, grid, ACT_ZERO_POINTS[activations])
            done += 1
    return done


def _quantize_input(model: onnx.ModelProto, node: onnx.NodeProto, position: int, grid: OperandGrid,
                    signed_zero_point: np.ndarray) -> None:
    """A Q/DQ pair on input ``position`` of ``node``, inserted right before it."""
    p = f"{node.name or node.output[0]}/in{position}"
    zero_point = UNSIGNED_ZERO_POINT if grid.unsigned else signed_zero_point
    model.graph.initializer.extend([numpy_helper.from_array(np.array(grid.scale, np.float32), f"{p}_scale"),
                                    numpy_helper.from_array(zero_point, f"{p}_zp")])
    at = list(model.graph.node).index(node)
    model.graph.node.insert(at, helper.make_node("DequantizeLinear", [f"{p}_q", f"{p}_scale", f"{p}_zp"],
                                                 [f"{p}_dq"], name=f"{p}_DQ"))
    model.graph.node.insert(at, helper.make_node("QuantizeLinear", [node.input[position], f"{p}_scale", f"{p}_zp"],
                                                 [f"{p}_q"], name=f"{p}_Q"))
    node.input[position] = f"{p}_dq"
