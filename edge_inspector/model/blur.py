"""Gaussian smoothing of anomaly maps, as a fixed depthwise conv (exports to a plain ONNX Conv)."""

from __future__ import annotations

import math

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
