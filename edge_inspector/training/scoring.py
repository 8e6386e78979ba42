"""From a trained HaloAE to what ships: raw anomaly map and image score, plus normal statistics.

``AnomalyScorer`` is the module that gets exported to ONNX::

    uint8 (B, H, W, 3) RGB -> normalize -> error_map (channel-mean squared feature error, (B, 1, h, w))
      -> minus the normal mean map (from held-back TRAINING images, never test images) -> abs
      -> Gaussian blur (fixed depthwise conv, export-friendly) -> bilinear upsample to (H, W)
      -> anomaly_map (B, 1, H, W) and score (B,) = mean (paper) | max | top-k mean of the map

The score is aggregated from the upsampled map, so a score recomputed from the shipped map (``aggregate``) is the
same number the graph gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edge_inspector.bundle.manifest import ScoreStats

AGGREGATIONS = ("mean", "max", "topk")
STAT_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian (1, 1, k, k) with radius ceil(2 sigma) (k = 3 for sigma 0.5, 5 for sigma 1)."""
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum()).view(1, 1, 2 * radius + 1, 2 * radius + 1)


def topk_count(height: int, width: int, fraction: float) -> int:
    """Number of map pixels the top-k mean averages (at least one)."""
    return max(1, math.ceil(fraction * height * width))


def aggregate(maps: np.ndarray, how: str, topk_fraction: float) -> np.ndarray:
    """Image scores from (N, H, W) or (N, 1, H, W) maps in numpy, identical to the graph's aggregation."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    if how == "mean":
        return flat.mean(axis=1)
    if how == "max":
        return flat.max(axis=1)
    if how == "topk":
        k = topk_count(1, flat.shape[1], topk_fraction)
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    raise ValueError(f"unknown aggregation {how!r}; allowed: {', '.join(AGGREGATIONS)}")


class AnomalyScorer(nn.Module):
    """Wraps a HaloAE-like model (``normalize``, ``error_map``) into raw anomaly map + score.

    Args:
        model: module with ``normalize(uint8 (B,H,W,3)) -> (B,3,H,W)`` and ``error_map(x) -> (B,1,h,w)``.
        height, width: the model input size (the map is upsampled to it).
        aggregation: 'mean' (paper), 'max' or 'topk'.
        topk_fraction: fraction of map pixels averaged by 'topk'.
        blur_sigma: Gaussian sigma on the error-map grid; 0 disables the blur.
    """

    def __init__(
        self,
        model: nn.Module,
        height: int,
        width: int,
        aggregation: str = "mean",
        topk_fraction: float = 0.01,
        blur_sigma: float = 1.0,
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
        self.model = model
        self.height, self.width = height, width
        self.aggregation = aggregation
        self.topk_fraction = topk_fraction
        self.blur_sigma = blur_sigma
        self.register_buffer("blur_kernel", gaussian_kernel(blur_sigma) if blur_sigma > 0 else torch.ones(1, 1, 1, 1))
        # Filled by fit_normal_statistics; shape fixed there from the model's error-map grid.
        self.register_buffer("mean_map", torch.zeros(1, 1, 1, 1))

    def raw_error(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) feature error before normal-map subtraction."""
        return self.model.error_map(self.model.normalize(images))

    def refine(self, error: torch.Tensor) -> torch.Tensor:
        """Subtract the normal map, take |.|, blur, upsample to the input size: (B, 1, H, W)."""
        residual = torch.abs(error - self.mean_map)
        pad = self.blur_kernel.shape[-1] // 2
        if pad:
            # Replicate padding keeps border values unbiased (zero padding would darken the map's rim).
            residual = F.conv2d(F.pad(residual, (pad, pad, pad, pad), mode="replicate"), self.blur_kernel)
        return F.interpolate(residual, size=(self.height, self.width), mode="bilinear", align_corners=False)

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        flat = anomaly_map.flatten(1)
        if self.aggregation == "mean":
            return flat.mean(dim=1)
        if self.aggregation == "max":
            return flat.amax(dim=1)
        k = topk_count(self.height, self.width, self.topk_fraction)
        return torch.topk(flat, k, dim=1).values.mean(dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, H, W, 3) RGB -> (anomaly_map (B, 1, H, W) float32, score (B,) float32)."""
        anomaly_map = self.refine(self.raw_error(images))
        return anomaly_map, self.score(anomaly_map)


@dataclass
class NormalStatistics:
    """What the holdout of normal training images says about normal scores."""

    image: ScoreStats
    pixel: ScoreStats
    image_scores: np.ndarray
    pixel_sample: np.ndarray
    """Up to ~1M map values (a strided sample) for pixel thresholds."""


def score_stats(values: np.ndarray) -> ScoreStats:
    v = np.asarray(values, np.float64).ravel()
    return ScoreStats(
        n=int(v.size),
        mean=float(v.mean()),
        std=float(v.std()),
        min=float(v.min()),
        max=float(v.max()),
        quantiles={str(q): float(np.quantile(v, q)) for q in STAT_QUANTILES},
    )


@torch.no_grad()
def run_scorer(
    scorer: AnomalyScorer, images: np.ndarray, batch_size: int = 8, progress: bool = False, desc: str = "scoring"
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, H, W) float32 and scores (N,) for uint8 (N, H, W, 3) images, in batches."""
    scorer.eval()
    maps, scores = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        anomaly_map, score = scorer(batch)
        maps.append(anomaly_map[:, 0].numpy())
        scores.append(score.numpy())
    return np.concatenate(maps), np.concatenate(scores)


@torch.no_grad()
def fit_normal_statistics(
    scorer: AnomalyScorer, holdout: np.ndarray, batch_size: int = 8, progress: bool = False
) -> NormalStatistics:
    """Set ``scorer.mean_map`` from held-back normal training images and measure their score distribution.

    Args:
        holdout: uint8 (N, H, W, 3) normal images that were NOT used for fitting (never test images).
    """
    if len(holdout) == 0:
        raise ValueError("normal statistics need at least one held-back training image")
    scorer.eval()
    total = None
    for start in tqdm(range(0, len(holdout), batch_size), desc="normal map", disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(holdout[start : start + batch_size]))
        error = scorer.raw_error(batch).sum(dim=0, keepdim=True)
        total = error if total is None else total + error
    scorer.mean_map = total / len(holdout)
    maps, scores = run_scorer(scorer, holdout, batch_size, progress, "normal stats")
    stride = max(1, maps.size // 1_000_000)
    pixel_sample = maps.ravel()[::stride].copy()
    return NormalStatistics(score_stats(scores), score_stats(maps), scores, pixel_sample)


def make_scorer(model: nn.Module, preset) -> AnomalyScorer:
    """An ``AnomalyScorer`` for ``model`` with the input size and score settings of ``preset`` (a model Preset)."""
    return AnomalyScorer(
        model,
        preset.model.height,
        preset.model.width,
        preset.score.aggregation,
        preset.score.topk_fraction,
        preset.score.blur_sigma,
    )
