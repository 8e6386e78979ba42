"""AnomalyScorer: normal-map subtraction, blur, upsampling, score aggregation; normal statistics from the holdout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.model.blur import gaussian_kernel
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import AnomalyScorer, aggregate, run_scorer, topk_count
from tests.compile.stand_in_model import StandInModel

torch.set_num_threads(1)


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(60, 180, size, dtype=np.float32), (size, 1))
    out = base[None, :, :, None] + rng.normal(0, 4, (n, size, size, 1))
    return np.clip(np.repeat(out, 3, axis=3), 0, 255).astype(np.uint8)


def test_gaussian_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel(1.0)
    assert k.shape == (1, 1, 5, 5)
    assert float(k.sum()) == pytest.approx(1.0)
    assert torch.equal(k, k.flip(-1)) and torch.equal(k, k.transpose(-1, -2))
    assert gaussian_kernel(0.5).shape[-1] == 3


@pytest.mark.parametrize("aggregation", ["mean", "max", "topk"])
def test_map_is_upsampled_and_score_matches_numpy_aggregation(aggregation):
    scorer = AnomalyScorer(StandInModel(), 32, 32, aggregation, topk_fraction=0.05)
    fit_normal_statistics(scorer, _images(4, 0))
    maps, scores = run_scorer(scorer, _images(3, 1), batch_size=2)
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    np.testing.assert_allclose(scores, aggregate(maps, aggregation, 0.05), rtol=1e-5)
    assert topk_count(32, 32, 0.05) == 52


def test_aggregations_differ_as_expected():
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 0, :3] = [9.0, 6.0, 3.0]
    assert aggregate(maps, "mean", 0.02)[0] == pytest.approx(0.18)
    assert aggregate(maps, "max", 0.02)[0] == 9.0
    assert aggregate(maps, "topk", 0.02)[0] == pytest.approx(7.5)  # top 2 of 100
    with pytest.raises(ValueError):
        aggregate(maps, "median", 0.1)
    with pytest.raises(ValueError):
        AnomalyScorer(StandInModel(), 8, 8, "median")


def test_mean_map_comes_from_the_holdout_and_is_subtracted():
    holdout = _images(6, 2)
    scorer = AnomalyScorer(StandInModel(), 32, 32, "mean", blur_sigma=0)
    stats = fit_normal_statistics(scorer, holdout, batch_size=4)
    with torch.no_grad():
        expected = scorer.raw_maps(torch.from_numpy(holdout))["reconstruction"].mean(dim=0, keepdim=True)
    torch.testing.assert_close(scorer.mean_map, expected)
    assert stats.image.n == 6 and stats.pixel.n == 6 * 32 * 32
    assert stats.image.min <= stats.image.quantiles["0.5"] <= stats.image.max
    # A holdout image scored against its own mean map is close to zero; a defect stands far out.
    defect = _images(1, 3)
    defect[0, 10:14, 4:28] = 255
    _, good_scores = run_scorer(scorer, _images(4, 4))
    _, defect_score = run_scorer(scorer, defect)
    assert defect_score[0] > 3 * good_scores.max()


def test_blur_spreads_a_single_hot_cell():
    scorer = AnomalyScorer(StandInModel(), 32, 32, "max", blur_sigma=1.0)
    error = torch.zeros(1, 1, 8, 8)
    error[0, 0, 4, 4] = 1.0
    sharp = AnomalyScorer(StandInModel(), 32, 32, "max", blur_sigma=0).refine({"reconstruction": error})
    soft = scorer.refine({"reconstruction": error})
    assert soft.shape == sharp.shape == (1, 1, 32, 32)
    assert soft.max() < sharp.max() and (soft > 1e-3).sum() > (sharp > 1e-3).sum()
    # The blur keeps the total mass (normalised kernel, replicate padding away from the border).
    assert float(soft.mean()) == pytest.approx(float(sharp.mean()), rel=1e-4)


@pytest.mark.parametrize("grid,size", [((8, 8), (256, 256)), ((7, 5), (640, 256)), ((4, 6), (5, 7)), ((10, 10), (4, 4))])
def test_matmul_upsampling_equals_bilinear_interpolation(grid, size):
    import torch.nn.functional as F

    from edge_inspector.model.blur import upsample_bilinear

    maps = torch.randn(2, 1, *grid, generator=torch.Generator().manual_seed(0))
    reference = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(maps, size), reference, atol=2e-6, rtol=1e-6)
