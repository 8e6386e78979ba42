"""The model that ships: a trained HaloAE wrapped into the raw anomaly map and image score (``AnomalyScorer``).

``AnomalyScorer`` is the module that gets exported to ONNX::

    uint8 (B, H, W, 3) RGB -> normalize -> the head's raw map on the auto-encoder grid (B, 1, h, w):
        reconstruction: channel-mean squared feature error minus the normal mean map, abs (the paper's)
        location:       the location head's per-cell Mahalanobis distance (model/location.py)
        fused:          both, each standardised by its mean/std on held-back good images, summed
      -> Gaussian blur (fixed depthwise conv, export-friendly) -> bilinear upsample to (H, W)
      -> ScorerOutput(anomaly_map (B, 1, H, W), score (B,)) with score = mean (paper) | max | top-k mean of the map

``ScorerOutput`` is the contract between the model, the exporter and the bundle: its field names are the ONNX
graph's output names (and the manifest's ``outputs``), so they cannot drift apart. Every normal statistic (mean
map, fusion standardisation; ``model/normal_stats.py``) comes from held-back TRAINING images, never test images.
The score is aggregated from the upsampled map, so a score recomputed from the shipped map (``aggregate``) is the
same number the graph gives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_inspector.model.blur import blur, gaussian_kernel, upsample_bilinear

INPUT_NAME = "image"
"""The graph's input: uint8 (1, H, W, 3) RGB at the model size (normalisation is inside the graph)."""


class ScorerOutput(NamedTuple):
    """What the scorer returns; the field names are the exported graph's output names, in this order."""

    anomaly_map: torch.Tensor
    """(B, 1, H, W) float32 raw anomaly map at the model input size."""
    score: torch.Tensor
    """(B,) float32 raw image score."""


AGGREGATIONS = ("mean", "max", "topk")
SCORING_HEADS = ("reconstruction", "location", "fused")


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


def heads_needed(head: str) -> tuple[str, ...]:
    """The raw maps a scoring head combines."""
    return ("reconstruction", "location") if head == "fused" else (head,)


class AnomalyScorer(nn.Module):
    """Wraps a HaloAE-like model into raw anomaly map + score.

    Args:
        model: module with ``normalize(uint8 (B,H,W,3)) -> (B,3,H,W)`` and ``error_map(x) -> (B,1,h,w)``; for the
            'location' and 'fused' heads also ``head_maps(x, heads) -> {name: (B,1,h,w)}`` (HaloAE has both).
        height, width: the model input size (the map is upsampled to it).
        aggregation: 'mean' (paper), 'max' or 'topk'.
        topk_fraction: fraction of map pixels averaged by 'topk'.
        blur_sigma: Gaussian sigma on the error-map grid; 0 disables the blur.
        head: 'reconstruction', 'location' or 'fused' (see the module docstring).
        fused_weight: weight of the standardised reconstruction map in 'fused'.
    """

    def __init__(
        self,
        model: nn.Module,
        height: int,
        width: int,
        aggregation: str = "mean",
        topk_fraction: float = 0.01,
        blur_sigma: float = 1.0,
        head: str = "reconstruction",
        fused_weight: float = 1.0,
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
        if head not in SCORING_HEADS:
            raise ValueError(f"unknown scoring head {head!r}; allowed: {', '.join(SCORING_HEADS)}")
        self.model = model
        self.height, self.width = height, width
        self.aggregation = aggregation
        self.topk_fraction = topk_fraction
        self.blur_sigma = blur_sigma
        self.head = head
        self.fused_weight = fused_weight
        self.register_buffer("blur_kernel", gaussian_kernel(blur_sigma))
        # Filled by fit_normal_statistics; shape fixed there from the model's error-map grid.
        self.register_buffer("mean_map", torch.zeros(1, 1, 1, 1))
        # mean and std of the reconstruction and location maps on normal images: what 'fused' standardises with
        self.register_buffer("fusion_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def raw_maps(self, images: torch.Tensor, heads: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """(B, 1, h, w) raw maps of ``heads`` (default: those this scorer's head needs), before any normal statistic."""
        heads = heads or heads_needed(self.head)
        x = self.model.normalize(images)
        if heads == ("reconstruction",):
            return {"reconstruction": self.model.error_map(x)}
        return self.model.head_maps(x, heads)

    def combine(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's (B, 1, h, w) map from raw maps: normal-map subtraction, fusion."""
        if self.head == "location":
            return maps["location"]
        residual = torch.abs(maps["reconstruction"] - self.mean_map)
        if self.head == "reconstruction":
            return residual
        rec_mean, rec_std, loc_mean, loc_std = self.fusion_stats
        return (maps["location"] - loc_mean) / loc_std + self.fused_weight * (residual - rec_mean) / rec_std

    def refine(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Combine, blur, upsample to the input size: (B, 1, H, W)."""
        combined = blur(self.combine(maps), self.blur_kernel)
        return upsample_bilinear(combined, (self.height, self.width))

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        flat = anomaly_map.flatten(1)
        if self.aggregation == "mean":
            return flat.mean(dim=1)
        if self.aggregation == "max":
            return flat.amax(dim=1)
        k = topk_count(self.height, self.width, self.topk_fraction)
        # unsorted: the mean needs no order, and ONNX Runtime's TopK skips its final sort (~15% of the op)
        return torch.topk(flat, k, dim=1, sorted=False).values.mean(dim=1)

    def forward(self, images: torch.Tensor) -> ScorerOutput:
        """uint8 (B, H, W, 3) RGB -> ScorerOutput(anomaly_map (B, 1, H, W) float32, score (B,) float32)."""
        anomaly_map = self.refine(self.raw_maps(images))
        return ScorerOutput(anomaly_map, self.score(anomaly_map))


def make_scorer(model: nn.Module, preset, head: str | None = None) -> AnomalyScorer:
    """An ``AnomalyScorer`` for ``model`` with the input size and score settings of ``preset`` (a model Preset).

    ``head`` overrides ``preset.score.head``; 'auto' is not a head a scorer can run (``choose_head`` resolves it).
    """
    head = head or preset.score.head
    if head == "auto":
        raise ValueError("score.head 'auto' is resolved by choose_head on held-back images before a scorer is built")
    return AnomalyScorer(
        model,
        preset.model.height,
        preset.model.width,
        preset.score.aggregation,
        preset.score.topk_fraction,
        preset.score.blur_sigma,
        head,
        preset.score.fused_weight,
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
def raw_maps_of(
    scorer: AnomalyScorer, images: np.ndarray, heads: tuple[str, ...], batch_size: int = 8, progress: bool = False,
    desc: str = "maps",
) -> dict[str, torch.Tensor]:
    """Raw (N, 1, h, w) maps of ``heads`` for uint8 (N, H, W, 3) images, in batches."""
    scorer.eval()
    parts: dict[str, list[torch.Tensor]] = {head: [] for head in heads}
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        for head, value in scorer.raw_maps(batch, heads).items():
            parts[head].append(value)
    return {head: torch.cat(values) for head, values in parts.items()}
