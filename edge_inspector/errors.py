"""The few exception types edge-inspector raises on purpose.

Each carries a message meant for the person running the tool: what is wrong and what to do about it.
"""


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


class MissingDependencyError(EdgeInspectorError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"'{module}' is not installed. Install it with: pip install 'edge-inspector[{extra}]'"
        )
        self.module = module
        self.extra = extra
