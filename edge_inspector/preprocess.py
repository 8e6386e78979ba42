"""The one image preprocessing both halves share: frame (any size, gray or colour) -> model input.

Training, evaluation, calibration and the line all call ``to_model_input`` so what the model sees can never differ
between them. Normalisation (ImageNet mean/std) happens inside the ONNX graph; this only resizes and orders
channels. ``Placement`` records the geometry so anomaly maps can be mapped back onto the original image
(``pipeline.roi.RoiMapper.model_to_frame``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

ResizeMode = Literal["stretch", "letterbox"]


@dataclass(frozen=True)
class Placement:
    """Where the source image landed inside the model input (pixels of the model input)."""

    x: int
    y: int
    width: int
    height: int
    source_width: int
    source_height: int


def to_rgb(image: np.ndarray, bgr: bool = True) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 (BGR from OpenCV unless bgr=False) or HxWx4 -> HxWx3 RGB."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    raise ValueError(f"unsupported image shape {image.shape}")


def to_model_input(
    image: np.ndarray,
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    pad_value: int = 0,
    bgr: bool = True,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Placement]:
    """Resize ``image`` to (height, width, 3) RGB uint8, stretched or letterboxed.

    Args:
        out: optional (height, width, 3) uint8 buffer to write into (e.g. pinned host memory).
    """
    rgb = to_rgb(image, bgr=bgr)
    src_h, src_w = rgb.shape[:2]
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    if resize == "stretch":
        interpolation = cv2.INTER_AREA if src_w > width or src_h > height else cv2.INTER_LINEAR
        cv2.resize(rgb, (width, height), dst=out, interpolation=interpolation)
        return out, Placement(0, 0, width, height, src_w, src_h)
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    out[...] = pad_value
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out[y0 : y0 + new_h, x0 : x0 + new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    return out, Placement(x0, y0, new_w, new_h, src_w, src_h)
