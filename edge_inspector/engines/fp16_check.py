"""Check an FP16-prepared graph (``engines.trt_prep``) against the original, both in ONNX Runtime on the CPU.

The score drift of the prepared graph is the part of the TensorRT error that comes from the preparation alone (FP16
rounding, the Q/DQ rewrites), measured before any build time is spent and on machines without a GPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edge_inspector.bundle.store import Bundle, load_bundle, write_bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import ParityReport, compare_engines
from edge_inspector.errors import BundleError


def bundle_with_graph(bundle: Bundle, graph_path: str | Path, out_dir: str | Path) -> Bundle:
    """A copy of ``bundle`` whose graph is ``graph_path`` (same manifest, new hash), e.g. to run the FP16 graph in
    ONNX Runtime through the ordinary engine."""
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.model_id = f"{manifest.model_id}-fp16"
    written = write_bundle(out_dir, graph_path, manifest, bundle.calibration_images())
    return load_bundle(written.path)


def verify_prepared(bundle: Bundle, prepared_path: str | Path, max_images: int = 8) -> ParityReport:
    """Run the original and the prepared graph in ONNX Runtime (CPU) on the calibration images and compare.

    Both graphs run with ONNX Runtime's graph optimizations off, node by node as the ONNX semantics (and
    TensorRT) define them, so the difference is the preparation's alone (FP16, the Q/DQ rewrites). Why not the
    optimized sessions the line uses: ORT's CPU optimizer mis-executes FP16 graphs with Q/DQ nodes (on the HQS
    magnetic_tile bundle: scores 24.5 instead of 14.2 at every optimization level from ``basic`` up, 14.4 with
    none), and optimized, the original runs integer kernels where the unoptimized graph computes in float: that
    difference alone (one-step roundings passed on through ~45 layers) moved the location head's score by up to
    4.7% with nothing converted to FP16 (one-off check; the FP16 figures are ``benchmarks/bench_trt.py``'s).
    TensorRT's plan is checked against the line's optimized session later.

    Returns:
        a ``ParityReport`` (prepared graph as the candidate) judged by the manifest's parity tolerances.
    """
    images = bundle.calibration_images()[:max_images]
    if not len(images):
        raise BundleError(f"{bundle.path} ships no calibration images: nothing to verify the FP16 graph on")
    with tempfile.TemporaryDirectory(prefix="edge-inspector-fp16-") as scratch:
        node_by_node = EngineSettings(graph_optimization="disable")
        reference = OrtEngine(bundle, node_by_node)
        candidate = OrtEngine(bundle_with_graph(bundle, prepared_path, scratch), node_by_node)
        try:
            return compare_engines(
                candidate, reference, images, bundle.manifest.thresholds.image, bundle.manifest.parity
            )
        finally:
            candidate.close()
            reference.close()
