"""Weight memory at run time: what ONNX Runtime holds after loading a graph, beside what the file stores.

The file is not the memory: a bundle stores 4-bit weights as INT4 and the location head's factors as blocked INT8,
and the engines widen or fold them when they load the graph (``engines.ort_rewrites``); ONNX Runtime's own
optimizers then fold constants and fuse Q/DQ pairs. The graph ONNX Runtime runs, written out after all that
(``SessionOptions.optimized_model_filepath``), holds the weights the session keeps; its initializer bytes are the
run-time weight bytes. (ONNX Runtime may re-pack a kernel's weights into its own layout, of about the same size,
and free the original; activations and the arena are not weights and are not counted.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from edge_inspector.bundle.graph_size import initializer_bytes
from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import load_session


def runtime_weight_bytes(graph: onnx.ModelProto, settings: EngineSettings | None = None) -> int:
    """Initializer bytes of ``graph`` as an ONNX Runtime session (``load_session``, as the line loads it) holds it
    after its load rewrites and optimizers."""
    with tempfile.TemporaryDirectory(prefix="ei-runtime-graph-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        load_session(graph, settings or EngineSettings(intra_op_threads=1), optimized_path=str(path))
        return initializer_bytes(onnx.load(str(path)))
