"""HaloAE training loss: CutPaste cross-entropy + (MSE + 1 - SSIM) on features and on the image, with the paper's
logistic loss-weight schedule over training progress. Reconstruction terms use the normal images only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_inspector.model.haloae import TrainOutput
from edge_inspector.model.presets import LossSchedule


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of (B, C, H, W) maps: Gaussian 11x11 window, C1 = 0.01^2, C2 = 0.03^2, zero padding
    (the pytorch-ssim formulation the official HaloAE code uses). Identical inputs give 1."""
    c = a.shape[1]
    win = _gaussian_window(min(window, a.shape[-1], a.shape[-2]) | 1, sigma, c, a)
    pad = win.shape[-1] // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, padding=pad, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def reconstruction_loss(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """MSE + (1 - SSIM)."""
    return F.mse_loss(pred, target) + (1 - ssim(pred, target))


@dataclass(frozen=True)
class LossWeights:
    classification: float
    features: float
    image: float


def loss_weights(progress: float, schedule: LossSchedule) -> LossWeights:
    """Weights at training progress in [0, 1] (epoch / epochs): classification falls, reconstruction rises.

    Defaults give ~0.97 -> ~0.11 (classification), ~0 -> ~0.34 (features), ~0 -> ~0.55 (image).
    """
    s = 1 / (1 + math.exp(-schedule.steepness * (progress - schedule.midpoint)))
    return LossWeights(
        classification=schedule.classification_start + (schedule.classification_end - schedule.classification_start) * s,
        features=schedule.feature_end * s,
        image=schedule.image_end * s,
    )


def haloae_loss(
    out: TrainOutput, images: torch.Tensor, labels: torch.Tensor, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms for logging.

    Args:
        out: the model's training output; its reconstructions cover the first ``n`` (normal) images.
        images: the normalised input batch (the first ``n`` are the normal originals).
        labels: CutPaste class per image (0 normal, 1 CutPaste-normal, 2 CutPaste-scar).
        weights: the schedule's weights at this step.
    """
    n = out.reconstruction.shape[0]
    ce = F.cross_entropy(out.logits, labels)
    feat = reconstruction_loss(out.features[:n], out.reconstruction)
    img = reconstruction_loss(images[:n], out.image_reconstruction)
    total = weights.classification * ce + weights.features * feat + weights.image * img
    terms = {"loss": float(total.detach()), "ce": float(ce.detach()), "feat": float(feat.detach()), "img": float(img.detach())}
    return total, terms
