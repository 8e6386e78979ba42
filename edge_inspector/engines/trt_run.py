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
from edge_inspector.engines.cuda_buffers import CudaBuffers, probe_gpu
from edge_inspector.errors import BundleError, EdgeInspectorError, EngineError, MissingDependencyError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

BOARD_MODEL_FILE = Path("/proc/device-tree/model")
"""The board's name on Jetson (and other device-tree) machines; absent on x86 desktops."""
CLOSE_WAIT_S = 30.0
"""How long ``close`` waits for a running inference before leaving the release to that inference."""


def load_tensorrt():
    """Import tensorrt, or say how to install it on this kind of machine."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("tensorrt"):
            raise MissingDependencyError.for_gpu("tensorrt") from None
        raise EngineError(f"tensorrt is installed but cannot load its libraries: {exc}") from exc
    return trt


def board_model() -> str:
    """``/proc/device-tree/model`` without its trailing NUL, or '' where the machine has none."""
    try:
        return BOARD_MODEL_FILE.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def probe_device(index: int = 0) -> DeviceInfo:
    """This machine as the plan check sees it; missing parts stay None and say why (never raises)."""
    try:
        version = load_tensorrt().__version__
    except (MissingDependencyError, EngineError):
        version = None
    gpu = probe_gpu(index)
    return DeviceInfo(
        gpu.name, gpu.compute_capability, version, sm_count=gpu.sm_count, total_memory_mb=gpu.total_memory_mb,
        module_model=board_model(), gpu_problem=gpu.problem,
    )


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
    """Runs a TensorRT plan for ``bundle`` on GPU ``device``. Thread-safe: one inference at a time; ``close`` waits
    for a running one, and ``infer`` after ``close`` raises EngineError.

    Raises:
        MissingDependencyError: tensorrt or pycuda is not installed.
        PlanMismatchError: the side-car does not fit this GPU, TensorRT version or the bundle's ONNX.
        BundleError: the plan or its side-car is missing or corrupt.
        EngineError: no GPU, out of GPU memory, or TensorRT / CUDA refused or failed (whatever exception they raise).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, plan_path: str | Path, device: int = 0):
        self._lock = threading.Lock()
        self._closed = False
        self._buffers: CudaBuffers | None = None
        trt = load_tensorrt()
        self.bundle, self.plan_path = bundle, Path(plan_path)
        if not self.plan_path.is_file():
            raise BundleError(f"TensorRT plan not found: {self.plan_path}")
        sidecar = read_sidecar(self.plan_path)
        self.device_info = probe_device(device)
        if self.device_info.gpu_name is None:
            raise EngineError(f"TensorRT backend unavailable: {self.device_info.unavailable_reason()} "
                              "(use engine.backend=onnxruntime)")
        check_plan_matches(sidecar, self.device_info, trt.__version__, bundle.manifest.graph.sha256, bundle.path)
        if sha256_file(self.plan_path) != sidecar.plan_sha256:
            raise BundleError(f"{self.plan_path} does not match its side-car hash: corrupt or replaced; rebuild it")
        manifest = bundle.manifest
        self._shape = (manifest.input.height, manifest.input.width, 3)
        self._input = manifest.input.name
        self._map, self._score = manifest.outputs.anomaly_map, manifest.outputs.score
        self._logger = make_logger(trt)
        try:
            self._open(trt, device)
        except EdgeInspectorError:
            self._release()  # nothing half-open stays behind on the GPU
            raise
        except Exception as exc:  # TensorRT's bindings raise TypeError/RuntimeError, pycuda its own types
            self._release()
            raise EngineError(f"TensorRT could not open {self.plan_path.name}: {type(exc).__name__}: {exc}"
                              f"{self._trt_errors()}") from exc
        log.info("tensorrt engine ready", extra=kv(model=manifest.model_id, **self.describe()))

    def _trt_errors(self, last: int = 3) -> str:
        errors = self._logger.errors[-last:]
        return f" (TensorRT: {' | '.join(errors)})" if errors else ""

    def _open(self, trt, device: int) -> None:
        self._buffers = CudaBuffers(device)
        # Under this device's context, so TensorRT's CUDA runtime works on the same device and context.
        with self._buffers.active():
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self._engine is None:
                raise EngineError(f"TensorRT could not load {self.plan_path}{self._trt_errors()}")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                needed = getattr(self._engine, "device_memory_size_v2", None)
                needed = f" (it needs {needed >> 20} MiB of activation memory)" if isinstance(needed, int) else ""
                raise EngineError(f"TensorRT could not create an execution context for {self.plan_path.name}: "
                                  f"most likely out of GPU memory{needed}{self._trt_errors()}")
            tensors = self._bind_shapes(trt)
            self._buffers.allocate(tensors)
            for name in tensors:
                if not self._context.set_tensor_address(name, self._buffers.address(name)):
                    raise EngineError(f"TensorRT refused the device address of tensor '{name}'{self._trt_errors()}")
        self._outputs = [n for n in tensors if n != self._input]

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
        if not self._context.set_input_shape(self._input, (1, *self._shape)):
            raise EngineError(f"{self.plan_path.name} does not accept input shape {(1, *self._shape)}: its "
                              f"optimisation profile was built for other shapes; rebuild it{self._trt_errors()}")
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
        with self._lock:
            if self._closed:
                raise EngineError("the TensorRT engine is closed")
            try:
                return self._run(image)
            except EdgeInspectorError:
                raise
            except Exception as exc:  # whatever TensorRT's bindings raise: the line fails the part, not the process
                raise EngineError(f"TensorRT inference failed: {type(exc).__name__}: {exc}") from exc
            finally:
                if self._closed:  # close() gave up waiting for this inference: free after it
                    self._release()

    def _run(self, image: np.ndarray) -> EngineOutput:
        buffers = self._buffers
        with buffers.active():
            buffers.host[self._input].reshape(self._shape)[...] = image
            buffers.to_device([self._input])
            if not self._context.execute_async_v3(buffers.stream.handle):
                raise EngineError(f"TensorRT inference failed{self._trt_errors()}")
            buffers.to_host(self._outputs)
            buffers.synchronize()
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

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Release the engine; safe to call twice and from any thread. Waits up to ``wait_s`` for a running
        inference; if it is still running then, that inference releases everything when it returns (freeing
        under a running kernel would crash the process)."""
        self._closed = True
        if not self._lock.acquire(timeout=wait_s):
            log.warning("tensorrt engine closing while an inference still runs; it is released when that returns",
                        extra=kv(waited_s=wait_s))
            return
        try:
            self._release()
        finally:
            self._lock.release()

    def _release(self) -> None:
        """TensorRT's objects first (reverse creation order, on this device's context), then the buffers."""
        buffers, self._buffers = self._buffers, None
        if buffers is None:
            return
        try:
            with buffers.active():  # TensorRT frees device memory here: on this device's context
                self._context = self._engine = self._runtime = None
        except EngineError as exc:
            log.warning("tensorrt objects released without their CUDA context", extra=kv(error=str(exc)))
            self._context = self._engine = self._runtime = None
        try:
            buffers.close()
        except EngineError as exc:  # a broken driver: nothing more to free from here
            log.warning("cuda buffers could not be freed", extra=kv(error=str(exc)))
