"""The few exception types edge-inspector raises on purpose.

Each carries a message meant for the person running the tool: what is wrong and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class EdgeInspectorError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(EdgeInspectorError):
    """A configuration key or value is invalid (the message names the key and what is allowed)."""


class BundleError(EdgeInspectorError):
    """A model bundle is missing, corrupt, or does not match its manifest."""


class PlanMismatchError(BundleError):
    """A TensorRT plan was built for another GPU, TensorRT version or ONNX graph."""


class EngineError(EdgeInspectorError):
    """Inference failed at run time."""


class SourceError(EdgeInspectorError):
    """A capture source cannot be opened or stopped delivering frames."""


class DataError(EdgeInspectorError):
    """A dataset folder is missing or not in the expected layout."""


class AccuracyCheckError(EdgeInspectorError):
    """A quantized model lost more accuracy than allowed; ``result`` holds what was produced, for inspection."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class MissingDependencyError(EdgeInspectorError):
    """An optional dependency is not installed; the message says how to install it on this kind of machine."""

    def __init__(self, module: str, extra: str, how: str | None = None):
        super().__init__(f"'{module}' is not installed. {how or f'Install it with: pip install {_extra(extra)}'}")
        self.module = module
        self.extra = extra

    @classmethod
    def for_gpu(cls, module: str) -> MissingDependencyError:
        """``tensorrt`` or ``pycuda`` missing: the way to get it differs between a Jetson and a desktop."""
        if JETSON_RELEASE_FILE.exists():
            how = JETSON_HINTS[module]
        else:
            how = (f"Install it with: pip install {_extra('tensorrt-cu12')} (NVIDIA driver for CUDA 12) or "
                   f"{_extra('tensorrt-cu13')} (driver 580 or newer); 'nvidia-smi' shows the CUDA version your "
                   "driver supports")
        return cls(module, "pycuda" if JETSON_RELEASE_FILE.exists() else "tensorrt-cu12", how)


def _extra(extra: str) -> str:
    return f"'edge-inspector[{extra}]'"


JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")
"""Present on every Jetson (L4T); its TensorRT comes with JetPack, never from PyPI."""
JETSON_HINTS = {
    "tensorrt": (
        "On a Jetson, TensorRT comes with JetPack, never from pip: sudo apt-get install python3-libnvinfer, and run "
        "edge-inspector from a venv made with --system-site-packages (deploy/install.sh makes one on a Jetson)"
    ),
    "pycuda": (
        f"On a Jetson: PATH=/usr/local/cuda/bin:$PATH pip install {_extra('pycuda')} (it compiles against "
        "JetPack's CUDA; deploy/install.sh does this on a Jetson)"
    ),
}
