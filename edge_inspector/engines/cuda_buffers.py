"""Pinned host + device memory per named tensor, copied asynchronously on one CUDA stream (pycuda's only owner).

Uses the device's *primary* context (the one TensorRT's CUDA runtime uses) and pushes it around each call, so the
engine can be created on one thread and run on another."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from edge_inspector.errors import EngineError, MissingDependencyError


def _driver():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:  # also raised when pycuda is present but libcuda (the NVIDIA driver) is not
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("pycuda"):
            raise MissingDependencyError("pycuda", "tensorrt") from None
        raise EngineError(f"pycuda cannot load the CUDA driver ({exc}); is the NVIDIA driver installed?") from exc
    return cuda


def gpu_info(index: int = 0) -> tuple[str, str] | None:
    """(name, 'major.minor') of CUDA device ``index``, or None when pycuda, the driver or the GPU is missing."""
    try:
        cuda = _driver()
    except (MissingDependencyError, EngineError):
        return None
    try:
        cuda.init()
        device = cuda.Device(index)
        major, minor = device.compute_capability()
        return device.name(), f"{major}.{minor}"
    except cuda.Error:  # no driver, no GPU, or no device ``index``
        return None


class CudaBuffers:
    """The context and stream of CUDA device ``device``; after ``allocate``, per tensor a pinned host array
    ``host[name]`` to fill or read and a device allocation at ``address(name)``. Copies and kernels go on
    ``stream`` (``stream.handle`` for TensorRT; ``stream.synchronize()`` waits for them)."""

    def __init__(self, device: int = 0):
        self._cuda = cuda = _driver()
        try:
            cuda.init()
            self._context = cuda.Device(device).retain_primary_context()
        except cuda.Error as exc:
            raise EngineError(f"cannot open CUDA device {device}: {exc}") from exc
        self.host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        with self.active():
            self.stream = cuda.Stream()

    def allocate(self, tensors: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        """One pinned host array and one device allocation per ``name -> (shape, numpy dtype)``."""
        with self.active():
            for name, (shape, dtype) in tensors.items():
                self.host[name] = self._cuda.pagelocked_empty(tuple(shape), dtype)
                self._device[name] = self._cuda.mem_alloc(max(self.host[name].nbytes, 1))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this device's context current on the calling thread for the duration."""
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def address(self, name: str) -> int:
        return int(self._device[name])

    def to_device(self, names: list[str]) -> None:
        for name in names:
            self._cuda.memcpy_htod_async(self._device[name], self.host[name], self.stream)

    def to_host(self, names: list[str]) -> None:
        for name in names:
            self._cuda.memcpy_dtoh_async(self.host[name], self._device[name], self.stream)

    def close(self) -> None:
        """Free every allocation and release the context; safe to call twice."""
        if self._context is None:
            return
        with self.active():
            self.stream.synchronize()
            for allocation in self._device.values():
                allocation.free()
            for array in self.host.values():
                array.base.free()  # the pinned HostAllocation behind the numpy view
        self._device.clear()
        self.host.clear()
        self._context.detach()
        self._context = None
