"""Normal statistics: what held-back good training images say about the scorer's maps and scores.

``fit_normal_statistics`` sets the scorer's own normal statistics (mean map, fusion standardisation) from the
holdout and measures the score distributions thresholds are taken from (``bundle.thresholds``). The holdout is
never used for fitting the weights, and test images are never used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_inspector.bundle.manifest import ScoreStats, Thresholds
from edge_inspector.bundle.thresholds import ThresholdPolicy, thresholds_from_scores
from edge_inspector.model.scorer import AnomalyScorer, heads_needed, raw_maps_of, run_scorer

STAT_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


@dataclass
class NormalStatistics:
    """What the holdout of normal training images says about normal scores."""

    image: ScoreStats
    pixel: ScoreStats
    image_scores: np.ndarray
    pixel_sample: np.ndarray
    """Up to ~1M map values (a strided sample) for pixel thresholds."""

    def thresholds(self, policy: ThresholdPolicy = ThresholdPolicy()) -> Thresholds:
        """Image and pixel thresholds at ``policy``'s target rates on these held-back good images."""
        return thresholds_from_scores(self.image_scores, self.pixel_sample, policy)


def score_stats(values: np.ndarray) -> ScoreStats:
    """Count, mean, spread and quantiles of ``values`` (any shape), as the manifest records them."""
    v = np.asarray(values, np.float64).ravel()
    return ScoreStats(
        n=int(v.size),
        mean=float(v.mean()),
        std=float(v.std()),
        min=float(v.min()),
        max=float(v.max()),
        quantiles={str(q): float(np.quantile(v, q)) for q in STAT_QUANTILES},
    )


def fit_scorer_statistics(scorer: AnomalyScorer, raw: dict[str, torch.Tensor]) -> None:
    """Set the normal mean map and the fusion standardisation from raw maps of held-back normal images."""
    if "reconstruction" in raw:
        scorer.mean_map = raw["reconstruction"].mean(dim=0, keepdim=True)
    if "reconstruction" in raw and "location" in raw:
        residual = torch.abs(raw["reconstruction"] - scorer.mean_map)
        loc = raw["location"]
        scorer.fusion_stats = torch.stack([residual.mean(), residual.std().clamp_min(1e-12),
                                           loc.mean(), loc.std().clamp_min(1e-12)])


@torch.no_grad()
def fit_normal_statistics(
    scorer: AnomalyScorer, holdout: np.ndarray, batch_size: int = 8, progress: bool = False
) -> NormalStatistics:
    """Fit the scorer's normal statistics on held-back normal training images and measure their score distribution.

    Args:
        holdout: uint8 (N, H, W, 3) normal images that were NOT used for fitting (never test images).
    """
    if len(holdout) == 0:
        raise ValueError("normal statistics need at least one held-back training image")
    fit_scorer_statistics(scorer, raw_maps_of(scorer, holdout, heads_needed(scorer.head), batch_size, progress,
                                              "normal map"))
    maps, scores = run_scorer(scorer, holdout, batch_size, progress, "normal stats")
    stride = max(1, maps.size // 1_000_000)
    pixel_sample = maps.ravel()[::stride].copy()
    return NormalStatistics(score_stats(scores), score_stats(maps), scores, pixel_sample)
