"""Closing the TensorRT engine and its CUDA buffers from any thread, during an inference, many times over.

Runs on the CPU with the *stand-in* ``tensorrt`` / ``pycuda`` (``tests/fixtures/trt_stand_in.py``), which follows
pycuda's context-stack and clean-up rules and records copies into freed memory; it proves nothing about real kernels
(the GPU check in ``deploy/JETSON.md`` samples real device memory over the same cycles).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_inspector.engines.base import EngineOutput
from edge_inspector.engines.cuda_buffers import CudaBuffers
from edge_inspector.engines.trt_run import TrtEngine
from edge_inspector.errors import EngineError
from tests.fixtures import trt_stand_in
from tests.runtime.test_trt_failures import TENSORS, conv_bundle, stand_in, stand_in_plan  # noqa: F401 (fixtures)

IMAGE = np.zeros((32, 32, 3), np.uint8)


def _in_thread(function, *args):
    """Run ``function(*args)`` on a new thread; return what it returned or raised."""
    outcome: list = []

    def target():
        try:
            outcome.append(function(*args))
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    return worker, outcome


def test_close_waits_for_the_running_inference(stand_in, conv_bundle):
    installed, plan = stand_in
    engine = TrtEngine(conv_bundle, plan)
    installed.behaviour.execute_gate = gate = threading.Event()
    inference, result = _in_thread(engine.infer, IMAGE)
    assert installed.behaviour.execute_started.wait(5)
    closer, _ = _in_thread(engine.close)
    closer.join(0.2)
    assert closer.is_alive(), "close() must wait for the inference it would free memory under"
    gate.set()
    inference.join(5)
    closer.join(5)
    assert isinstance(result[0], EngineOutput)
    assert installed.cuda.violations == []
    assert installed.cuda.live_device == set() and installed.cuda.live_streams == 0


def test_close_that_gives_up_waiting_leaves_the_release_to_the_inference(stand_in, conv_bundle):
    installed, plan = stand_in
    engine = TrtEngine(conv_bundle, plan)
    installed.behaviour.execute_gate = gate = threading.Event()
    inference, result = _in_thread(engine.infer, IMAGE)
    assert installed.behaviour.execute_started.wait(5)
    engine.close(wait_s=0.05)
    assert installed.cuda.live_device, "nothing may be freed under the running inference"
    gate.set()
    inference.join(5)
    assert isinstance(result[0], EngineOutput) and installed.cuda.violations == []
    assert installed.cuda.live_device == set() and installed.cuda.live_streams == 0


def test_infer_after_close_is_an_engine_error(stand_in, conv_bundle):
    _, plan = stand_in
    engine = TrtEngine(conv_bundle, plan)
    engine.close()
    engine.close()
    with pytest.raises(EngineError, match="engine is closed"):
        engine.infer(IMAGE)


def _open_buffers():
    buffers = CudaBuffers(0)
    buffers.allocate({name: (shape, dtype) for name, (shape, dtype, _) in TENSORS.items()})
    return buffers


def test_fifty_open_close_cycles_on_several_threads_leak_nothing(monkeypatch):
    cuda = trt_stand_in.install(monkeypatch, TENSORS).cuda
    for cycle in range(50):
        opener, closer = cycle % 3 == 0, cycle % 2 == 0  # open / close on the main thread or on a worker
        if opener:
            buffers = _open_buffers()
        else:
            worker, opened = _in_thread(_open_buffers)
            worker.join(5)
            buffers = opened[0]
        if closer:
            buffers.close()
            assert cuda.stacks.driver == [], f"cycle {cycle}: a context stays pushed on the closing thread"
        else:
            worker, outcome = _in_thread(lambda: (buffers.close(), len(cuda.stacks.driver))[1])
            worker.join(5)
            assert outcome == [0], f"cycle {cycle}: a context stays pushed on the closing thread"
        del buffers
        assert (cuda.live_streams, cuda.leaked_streams) == (0, 0), f"cycle {cycle}: stream not destroyed"
        assert cuda.live_device == set() and cuda.live_host == 0
    assert cuda.retained == 1, "the primary context is retained once per process, not once per open"


def test_out_of_gpu_memory_while_allocating_is_an_engine_error(monkeypatch):
    installed = trt_stand_in.install(monkeypatch, TENSORS)
    installed.behaviour.free_device_bytes = 10
    buffers = CudaBuffers(0)
    with pytest.raises(EngineError, match="out of GPU memory allocating 3072 bytes for tensor 'image'"):
        buffers.allocate({"image": ((1, 32, 32, 3), np.uint8)})
    buffers.close()
    assert installed.cuda.live_host == 0 and installed.cuda.live_streams == 0
