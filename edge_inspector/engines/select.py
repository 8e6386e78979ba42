"""Pick the engine for a bundle: the one place that knows which backends exist."""

from __future__ import annotations

import logging

from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import Engine
from edge_inspector.errors import EngineError
from edge_inspector.log import kv

log = logging.getLogger(__name__)


def open_engine(bundle: Bundle, settings: EngineSettings) -> Engine:
    """Open the engine ``settings.backend`` asks for ('auto': the best available one) and warm it up.

    Raises:
        BundleError: the bundle does not match its graph.
        EngineError: the requested backend is not available here.
    """
    backend = settings.backend
    if backend == "tensorrt":
        raise EngineError("The TensorRT backend is not available in this build; use engine.backend=onnxruntime")
    from edge_inspector.engines.ort import OrtEngine

    engine = OrtEngine(bundle, settings)
    log.info("engine selected", extra=kv(requested=backend, backend=engine.name, reason="default CPU engine"))
    if settings.warmup_runs:
        engine.warmup(settings.warmup_runs)
    return engine
