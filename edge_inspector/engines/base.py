"""The engine interface every backend implements (ONNX Runtime, TensorRT).

An engine takes one preprocessed image (uint8, (H, W, 3) RGB at the bundle's input size) and returns the raw
anomaly map and image score. Thresholds are applied later, by the decision module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EngineOutput:
    anomaly_map: np.ndarray
    """(H, W) float32 raw anomaly map at the model input size."""
    score: float
    """Raw image score."""


def warmup_image(bundle, shape: tuple[int, int, int]) -> np.ndarray:
    """The image engines warm up on: the bundle's first calibration image, else zeros of the input shape."""
    images = bundle.calibration_images()
    return images[0] if len(images) else np.zeros(shape, np.uint8)


@runtime_checkable
class Engine(Protocol):
    name: str
    """'onnxruntime' or 'tensorrt'."""

    def warmup(self, runs: int = 2) -> None: ...

    def infer(self, image: np.ndarray) -> EngineOutput:
        """Run one (H, W, 3) uint8 RGB image. Raises EngineError on failure."""
        ...

    def describe(self) -> dict[str, str]:
        """Backend, device, versions, providers: for logs, the status topic and benchmarks."""
        ...

    def close(self) -> None: ...
