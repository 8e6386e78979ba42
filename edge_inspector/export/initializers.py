"""Lossless clean-ups of an exported graph's initializers: the graph computes exactly the same, in fewer bytes.

Both the FP32 and the QDQ graph of a calibration get them, so their size ratio compares like with like.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

INDEX_INPUTS = {"Gather": 1, "GatherElements": 1, "GatherND": 1}
"""Ops whose index input accepts int32 as well as int64 (input position)."""


def narrow_index_initializers(model: onnx.ModelProto) -> int:
    """Store int64 index tables as int32 (in place) where they only feed Gather-family indices; returns bytes saved.

    The exporter writes HaloAE's relative-position gather indices as int64: about 0.8 MB, more than all 4-bit weights
    together. Every index fits int32, which these ops accept, so the graph computes exactly the same.
    """
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, i))
    saved = 0
    for i, t in enumerate(model.graph.initializer):
        used = uses.get(t.name, set())
        if t.data_type != TensorProto.INT64 or not used:
            continue
        if not all(INDEX_INPUTS.get(op) == pos for op, pos in used):
            continue
        value = numpy_helper.to_array(t)
        if value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
            continue
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.int32), t.name))
        saved += value.size * 4
        # the exporter also records the table's type in value_info; left at int64, shape inference (FP16
        # preparation for TensorRT) refuses the graph
        for info in model.graph.value_info:
            if info.name == t.name:
                info.type.tensor_type.elem_type = TensorProto.INT32
    return saved


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Merge initializers with identical dtype, shape and bytes (in place); returns how many were removed.

    The exporter writes one copy of a buffer per module even when they are equal (HaloAE's relative-position index
    tables: one per attention block, all the same); the graph computes exactly the same with one shared copy.
    """
    graph = model.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    graph_inputs = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.name in graph_inputs:  # an overridable input must keep its own name
            kept.append(t)
            continue
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
            kept.append(t)
    if rename:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return len(rename)
