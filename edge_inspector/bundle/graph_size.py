"""How many bytes a graph's stored tensors take: the "weight bytes" that calibration, export and bench report."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers, INT4/UINT4 packed two per byte as ONNX stores them."""
    total = 0
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
        if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
            total += (count + 1) // 2
        else:
            total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total
