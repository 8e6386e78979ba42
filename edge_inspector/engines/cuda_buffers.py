"""Pinned host + device memory per named tensor, copied asynchronously on one CUDA stream (pycuda's only owner).

Uses the device's *primary* context (the one TensorRT's CUDA runtime uses) and pushes it around each call, so the
engine can be created on one thread, run on another and closed on a third. Every pycuda error becomes an
``EngineError`` naming what failed (out of GPU memory included), so the backend choice can fall back or fail clearly.

The primary context is retained once per process and device and never released by us: TensorRT's CUDA runtime holds
the same context until the process exits, so releasing ours would free nothing, and pycuda can only release a
primary context on the thread that retained it, leaving it pushed there (its ``detach`` does not pop). What each
``CudaBuffers`` owns (stream, device and pinned allocations) is freed by ``close`` under that context, from any
thread, stream last.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge_inspector.errors import EngineError, MissingDependencyError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

_primary_contexts: dict[int, object] = {}
_primary_contexts_lock = threading.Lock()


def _driver():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:  # also raised when pycuda is present but libcuda (the NVIDIA driver) is not
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("pycuda"):
            raise MissingDependencyError.for_gpu("pycuda") from None
        raise EngineError(f"pycuda cannot load the CUDA driver ({exc}); is the NVIDIA driver installed?") from exc
    return cuda


@contextmanager
def _cuda_errors(cuda, what: str) -> Iterator[None]:
    """Turn pycuda's own exceptions into an EngineError that says what was being done."""
    try:
        yield
    except cuda.MemoryError as exc:
        raise EngineError(f"out of GPU memory {what}: {exc}") from exc
    except cuda.Error as exc:
        raise EngineError(f"CUDA error {what}: {exc}") from exc


def _primary_context(cuda, device: int):
    """The primary context of ``device``, retained on first use (see the module docstring for why only once)."""
    with _primary_contexts_lock:
        context = _primary_contexts.get(device)
        if context is None:
            with _cuda_errors(cuda, f"opening CUDA device {device}"):
                cuda.init()
                context = cuda.Device(device).retain_primary_context()
            _primary_contexts[device] = context
        return context


@dataclass(frozen=True)
class GpuProbe:
    """CUDA device ``index`` as pycuda sees it; ``problem`` says why the other fields are None."""

    name: str | None = None
    compute_capability: str | None = None
    """'major.minor', e.g. '8.7'."""
    sm_count: int | None = None
    total_memory_mb: int | None = None
    driver_cuda_version: str | None = None
    """The CUDA version the installed driver supports, e.g. '12.6' (``cuDriverGetVersion``)."""
    pycuda_cuda_version: str | None = None
    """The CUDA version pycuda was compiled against."""
    problem: str | None = None


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def probe_gpu(index: int = 0) -> GpuProbe:
    """Describe CUDA device ``index``; never raises (what is missing goes into ``problem``)."""
    try:
        cuda = _driver()
    except MissingDependencyError:
        return GpuProbe(problem="pycuda not installed (the TensorRT path needs it for GPU buffers)")
    except EngineError as exc:
        return GpuProbe(problem=str(exc))
    try:
        cuda.init()
        driver = _cuda_version(cuda.get_driver_version())
        built = ".".join(str(n) for n in cuda.get_version()[:2])
        count = cuda.Device.count()
        if index >= count:
            return GpuProbe(driver_cuda_version=driver, pycuda_cuda_version=built,
                            problem=f"no CUDA device {index} (this machine has {count})")
        device = cuda.Device(index)
        major, minor = device.compute_capability()
        return GpuProbe(
            name=device.name(),
            compute_capability=f"{major}.{minor}",
            sm_count=int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
            total_memory_mb=int(device.total_memory()) >> 20,
            driver_cuda_version=driver,
            pycuda_cuda_version=built,
        )
    except cuda.Error as exc:  # no driver loaded, no GPU, driver too old for pycuda's CUDA
        return GpuProbe(problem=f"no usable NVIDIA GPU: {exc}")


class CudaBuffers:
    """The stream of CUDA device ``device``; after ``allocate``, per tensor a pinned host array ``host[name]`` to
    fill or read and a device allocation at ``address(name)``. Copies and kernels go on ``stream`` (``stream.handle``
    for TensorRT; ``synchronize()`` waits for them). Not thread-safe by itself: the engine serialises calls.

    Raises:
        MissingDependencyError: pycuda is not installed.
        EngineError: no driver or device, out of GPU memory, or any CUDA error (the message says which call).
    """

    def __init__(self, device: int = 0):
        self._cuda = cuda = _driver()
        self._context = _primary_context(cuda, device)
        self.host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        self._closed = False
        with self.active(), _cuda_errors(cuda, "creating a CUDA stream"):
            self.stream = cuda.Stream()

    def allocate(self, tensors: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        """One pinned host array and one device allocation per ``name -> (shape, numpy dtype)``."""
        with self.active():
            for name, (shape, dtype) in tensors.items():
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                with _cuda_errors(self._cuda, f"allocating {nbytes} bytes for tensor '{name}'"):
                    self.host[name] = self._cuda.pagelocked_empty(tuple(shape), dtype)
                    self._device[name] = self._cuda.mem_alloc(max(nbytes, 1))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this device's context current on the calling thread for the duration."""
        if self._closed:
            raise EngineError("the CUDA buffers are closed")
        with _cuda_errors(self._cuda, "making the CUDA context current"):
            self._context.push()
        try:
            yield
        finally:
            with _cuda_errors(self._cuda, "releasing the CUDA context"):
                self._cuda.Context.pop()

    def address(self, name: str) -> int:
        return int(self._device[name])

    def to_device(self, names: list[str]) -> None:
        with _cuda_errors(self._cuda, "copying the input to the GPU"):
            for name in names:
                self._cuda.memcpy_htod_async(self._device[name], self.host[name], self.stream)

    def to_host(self, names: list[str]) -> None:
        with _cuda_errors(self._cuda, "copying the outputs from the GPU"):
            for name in names:
                self._cuda.memcpy_dtoh_async(self.host[name], self._device[name], self.stream)

    def synchronize(self) -> None:
        with _cuda_errors(self._cuda, "waiting for the CUDA stream"):
            self.stream.synchronize()

    def close(self) -> None:
        """Wait for the stream, free every allocation, then destroy the stream; from any thread, safe to call twice.

        A CUDA error on the way (a sticky error after a failed kernel) is logged and the rest is still freed.
        """
        if self._closed:
            return
        with self.active():
            self._closed = True
            self._try("synchronize the stream", self.stream.synchronize)
            for name, allocation in self._device.items():
                self._try(f"free device memory of '{name}'", allocation.free)
            for name, array in self.host.items():
                self._try(f"free pinned memory of '{name}'", array.base.free)
            self._device.clear()
            self.host.clear()
            # Dropping the last reference destroys the stream, while its context is current on this thread.
            self.stream = None

    def _try(self, step: str, call) -> None:
        try:
            call()
        except self._cuda.Error as exc:
            log.warning("cuda clean-up step failed", extra=kv(step=step, error=str(exc)))
