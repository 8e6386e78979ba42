"""Gaussian smoothing of anomaly maps, as a fixed depthwise conv (exports to a plain ONNX Conv), and their bilinear
upsampling to the input size, as two matmuls."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian (1, 1, k, k) with radius ceil(2 sigma) (k = 3 for sigma 0.5, 5 for sigma 1).

    sigma 0 gives the 1x1 identity kernel.
    """
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum()).view(1, 1, 2 * radius + 1, 2 * radius + 1)


def blur(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Smooth (B, 1, h, w) maps with ``kernel``; replicate padding keeps the rim unbiased (zeros would darken it)."""
    pad = kernel.shape[-1] // 2
    if not pad:
        return maps
    return F.conv2d(F.pad(maps, (pad, pad, pad, pad), mode="replicate"), kernel)


@lru_cache(maxsize=32)
def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres (``align_corners=False``)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    matrix = np.zeros((n_out, n_in), np.float64)
    np.add.at(matrix, (np.arange(n_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), high), frac)
    return matrix.astype(np.float32)


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), the same values as ``F.interpolate(..., "bilinear", align_corners=False)``.

    Bilinear interpolation is separable, so it is ``A_h @ map @ A_w^T`` with fixed matrices: two small MatMuls in
    the ONNX graph. Why not Resize: ONNX Runtime runs a Resize of a one-channel map in its channel-blocked layout,
    padded to 16 channels, and converts it back: about 0.85 ms of an 8 ms quantized image (ORT profiler); the
    matmuls cost almost nothing.
    """
    height, width = size
    rows = torch.from_numpy(_bilinear_matrix(height, maps.shape[-2])).to(maps.device)
    cols = torch.from_numpy(_bilinear_matrix(width, maps.shape[-1]).T.copy()).to(maps.device)
    return torch.matmul(torch.matmul(rows, maps), cols)
