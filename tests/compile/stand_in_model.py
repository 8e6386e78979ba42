"""A tiny stand-in with HaloAE's scoring interface (``normalize``, ``error_map``) for scoring and export tests.

It is not a learned model: the "feature error" is the squared difference between the image and its local mean,
pooled 4x like HaloAE's 64x64 grid for a 256x256 input, so a scratch or stain scores high on a smooth texture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StandInModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.smooth = nn.Conv2d(3, 3, 5, padding=2, groups=3, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 25)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std

    def error_map(self, x: torch.Tensor) -> torch.Tensor:
        error = (x - self.smooth(x)) ** 2
        return F.avg_pool2d(error.mean(dim=1, keepdim=True), 4)
