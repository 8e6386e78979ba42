"""TensorRT engine: runs a plan built by ``edge-inspector build-engine`` behind the common Engine interface.

A plan is refused *before* it is deserialised when its side-car says it was built for another GPU, another TensorRT
version or another ONNX graph (TensorRT itself would either fail with an obscure message or, worse, run a plan for
the wrong graph). Buffers are keyed by tensor name; inference is one async copy in, ``execute_async_v3``, async
copies out and one stream synchronisation. tensorrt is imported here and in ``trt_build.py`` only.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from edge_inspector.bundle.plans import DeviceInfo, check_plan_matches, read_sidecar
from edge_inspector.bundle.store import Bundle, sha256_file
from edge_inspector.engines.base import EngineOutput, warmup_image
from edge_inspector.engines.cuda_buffers import CudaBuffers, gpu_info
from edge_inspector.errors import BundleError, EngineError, MissingDependencyError
from edge_inspector.log import kv

log = logging.getLogger(__name__)


def load_tensorrt():
    """Import tensorrt, or say which extra brings it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("tensorrt"):
            raise MissingDependencyError("tensorrt", "tensorrt") from None
        raise EngineError(f"tensorrt is installed but cannot load its libraries: {exc}") from exc
    return trt


def probe_device(index: int = 0) -> DeviceInfo:
    """This machine as the plan check sees it; missing parts stay None (never raises)."""
    try:
        version = load_tensorrt().__version__
    except (MissingDependencyError, EngineError):
        version = None
    gpu = gpu_info(index)
    return DeviceInfo(gpu[0] if gpu else None, gpu[1] if gpu else None, version)


def make_logger(trt):
    """A ``trt.ILogger`` that forwards to our structured log and remembers errors for the exception message."""

    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR, severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO, severity.VERBOSE: logging.DEBUG,
    }

    class _TrtLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, message):
            python_level = levels.get(level, logging.INFO)
            if python_level >= logging.ERROR:
                self.errors.append(message)
            logging.getLogger("edge_inspector.tensorrt").log(python_level, message)

    return _TrtLogger()


class TrtEngine:
    """Runs a TensorRT plan for ``bundle`` on GPU ``device``.

    Raises:
        MissingDependencyError: tensorrt or pycuda is not installed.
        PlanMismatchError: the side-car does not fit this GPU, TensorRT version or the bundle's ONNX.
        BundleError: the plan or its side-car is missing or corrupt.
        EngineError: no GPU, or TensorRT refused the plan.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, plan_path: str | Path, device: int = 0):
        trt = load_tensorrt()
        self.bundle, self.plan_path = bundle, Path(plan_path)
        if not self.plan_path.is_file():
            raise BundleError(f"TensorRT plan not found: {self.plan_path}")
        sidecar = read_sidecar(self.plan_path)
        self.device_info = probe_device(device)
        if self.device_info.gpu_name is None:
            raise EngineError("no NVIDIA GPU found: the TensorRT backend needs one (use engine.backend=onnxruntime)")
        check_plan_matches(sidecar, self.device_info, trt.__version__, bundle.manifest.graph.sha256, bundle.path)
        if sha256_file(self.plan_path) != sidecar.plan_sha256:
            raise BundleError(f"{self.plan_path} does not match its side-car hash: corrupt or replaced; rebuild it")
        manifest = bundle.manifest
        self._shape = (manifest.input.height, manifest.input.width, 3)
        self._input = manifest.input.name
        self._map, self._score = manifest.outputs.anomaly_map, manifest.outputs.score
        self._logger = make_logger(trt)
        self._buffers = CudaBuffers(device)
        try:
            # Under this device's context, so TensorRT's CUDA runtime works on the same device and context.
            with self._buffers.active():
                self._runtime = trt.Runtime(self._logger)
                self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
                if self._engine is None:
                    raise EngineError(f"TensorRT could not load {self.plan_path}: {' | '.join(self._logger.errors)}")
                self._context = self._engine.create_execution_context()
                tensors = self._bind_shapes(trt)
                self._buffers.allocate(tensors)
                for name in tensors:
                    self._context.set_tensor_address(name, self._buffers.address(name))
        except BaseException:
            self.close()  # nothing half-open stays behind on the GPU
            raise
        self._outputs = [n for n in tensors if n != self._input]
        self._lock = threading.Lock()
        log.info("tensorrt engine ready", extra=kv(model=manifest.model_id, **self.describe()))

    def _bind_shapes(self, trt) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Fix the input at batch 1 and read every I/O tensor's shape and dtype back from the context."""
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = [n for n in (self._map, self._score) if n not in names]
        if inputs != [self._input] or missing:
            raise BundleError(
                f"{self.plan_path} has inputs {inputs} and tensors {names}; the manifest wants input "
                f"'{self._input}' and outputs '{self._map}', '{self._score}': rebuild the plan"
            )
        self._context.set_input_shape(self._input, (1, *self._shape))
        return {
            name: (tuple(self._context.get_tensor_shape(name)), np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
            for name in names
        }

    def warmup(self, runs: int = 2) -> None:
        image = warmup_image(self.bundle, self._shape)
        for _ in range(runs):
            self.infer(image)

    def infer(self, image: np.ndarray) -> EngineOutput:
        if image.shape != self._shape or image.dtype != np.uint8:
            raise EngineError(f"engine input must be uint8 {self._shape}, got {image.dtype} {image.shape}")
        buffers = self._buffers
        with self._lock, buffers.active():
            buffers.host[self._input].reshape(self._shape)[...] = image
            buffers.to_device([self._input])
            if not self._context.execute_async_v3(buffers.stream.handle):
                raise EngineError(f"TensorRT inference failed: {' | '.join(self._logger.errors[-3:])}")
            buffers.to_host(self._outputs)
            buffers.stream.synchronize()
            # Copy out of the pinned buffers: the next frame overwrites them while this result is still in use.
            anomaly_map = np.array(buffers.host[self._map].reshape(self._shape[:2]), np.float32)
            score = float(buffers.host[self._score].reshape(-1)[0])
        return EngineOutput(anomaly_map, score)

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "version": self.device_info.tensorrt_version or "",
            "device": f"{self.device_info.gpu_name} (sm {self.device_info.compute_capability})",
            "plan": self.plan_path.name,
        }

    def close(self) -> None:
        """Release TensorRT's objects, then the buffers they pointed at; safe to call twice."""
        buffers, self._buffers = getattr(self, "_buffers", None), None
        if buffers is None:
            return
        with buffers.active():  # TensorRT frees device memory here: on this device's context
            self._context = self._engine = self._runtime = None  # reverse creation order
        buffers.close()
