"""Pick the engine for a bundle: the one place that knows which backends exist."""

from __future__ import annotations

import logging

from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import Engine
from edge_inspector.errors import EdgeInspectorError
from edge_inspector.log import kv

log = logging.getLogger(__name__)


def open_engine(bundle: Bundle, settings: EngineSettings) -> Engine:
    """Open the engine ``settings.backend`` asks for ('auto': the best available one) and warm it up.

    Raises:
        BundleError: the bundle does not match its graph.
        EngineError: the requested backend is not available here, or 'tensorrt' failed to open or warm up
            ('auto' falls back to ONNX Runtime instead and logs why).
        PlanMismatchError / MissingDependencyError: 'tensorrt' requested without a fitting plan / without TensorRT.
    """
    backend = settings.backend
    from edge_inspector.bundle.plans import BackendChoice, DeviceInfo, choose_backend, plan_candidates
    from edge_inspector.engines.ort import OrtEngine
    from edge_inspector.engines.trt_run import TrtEngine, probe_device

    # Probing imports tensorrt and touches the GPU: only when TensorRT might be chosen.
    device = DeviceInfo() if backend == "onnxruntime" else probe_device()
    candidates = [] if backend == "onnxruntime" else plan_candidates(bundle.path, settings.plan)
    choice = choose_backend(backend, candidates, device, bundle.manifest.graph.sha256, bundle.path)
    engine = None
    if choice.backend == "tensorrt":
        try:
            engine = TrtEngine(bundle, choice.plan)
            if settings.warmup_runs:  # the first inferences are where a plan that loads can still fail
                engine.warmup(settings.warmup_runs)
        except EdgeInspectorError as exc:  # TrtEngine turns every TensorRT / CUDA failure into one of these
            if engine is not None:
                engine.close()
            if backend == "tensorrt":
                raise
            # auto: a line that can run on the CPU should run, and say loudly why it is not on the GPU.
            log.warning("tensorrt engine failed, using onnxruntime", extra=kv(plan=str(choice.plan), error=str(exc)))
            choice = BackendChoice("onnxruntime", None, f"ONNX Runtime: TensorRT plan {choice.plan} failed: {exc}")
            engine = None
    if engine is None:
        engine = OrtEngine(bundle, settings)
        if settings.warmup_runs:
            engine.warmup(settings.warmup_runs)
    log.info("engine selected", extra=kv(requested=backend, backend=engine.name, reason=choice.reason))
    return engine
