"""Decision: normalised score, sensitivity, regions in frame coordinates, fail-safe verdicts."""

import math

import numpy as np
import pytest

from edge_inspector.pipeline.decision import (
    DecisionParams,
    decide,
    effective_threshold,
    fail_safe,
    find_regions,
    normalized_score,
)
from edge_inspector.results import Verdict

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_normalised_score_is_half_at_threshold_and_monotonic():
    assert normalized_score(0.2, 0.2) == pytest.approx(0.5)
    values = [normalized_score(s, 0.2) for s in (0.0, 0.1, 0.2, 0.4, 10.0)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] < 1.0
    assert normalized_score(-1.0, 0.2) == 0.0


def test_sensitivity_moves_the_effective_threshold():
    assert effective_threshold(0.2, 0.5) == pytest.approx(0.2)
    assert effective_threshold(0.2, 0.75) == pytest.approx(0.2 / 3)  # rejects more
    assert effective_threshold(0.2, 0.25) == pytest.approx(0.6)  # rejects less
    assert math.isfinite(effective_threshold(0.2, 0.0)) and effective_threshold(0.2, 1.0) > 0


def test_verdict_follows_the_effective_threshold():
    flat = np.zeros((8, 8), np.float32)
    params = DecisionParams(threshold=0.2, pixel_threshold=0.1)
    assert decide(flat, 0.19, params, IDENTITY, (8, 8)).verdict == Verdict.PASS
    fail = decide(flat, 0.2, params, IDENTITY, (8, 8))
    assert fail.verdict == Verdict.FAIL and fail.normalized_score == pytest.approx(0.5)
    stricter = DecisionParams(threshold=0.2, pixel_threshold=0.1, sensitivity=0.8)
    assert decide(flat, 0.1, stricter, IDENTITY, (8, 8)).verdict == Verdict.FAIL
    assert decide(flat, 0.1, stricter, IDENTITY, (8, 8)).threshold == pytest.approx(0.05)


def test_regions_are_reported_in_frame_pixels_largest_first():
    anomaly = np.zeros((32, 32), np.float32)
    anomaly[4:8, 4:12] = 0.5  # 4 x 8 = 32 model pixels
    anomaly[20:22, 20:22] = 0.9  # 4 model pixels
    scale_2_shift = np.array([[2.0, 0.0, 100.0], [0.0, 2.0, 50.0]])  # model -> frame: x2, offset (100, 50)
    regions, mask = find_regions(anomaly, 0.3, scale_2_shift, (200, 200, 3))
    assert [r.area_px for r in regions] == [128, 16]
    big, small = regions
    assert (big.x, big.y) == (108, 58)
    assert big.width == pytest.approx(16, abs=2) and big.height == pytest.approx(8, abs=2)
    assert small.max_score == pytest.approx(0.9) and (small.x, small.y) == (140, 90)
    assert mask.shape == (200, 200) and mask[60, 115] == 255 and mask[10, 10] == 0
    assert all(len(r.contour) >= 2 for r in regions)


def test_small_regions_are_dropped():
    anomaly = np.zeros((16, 16), np.float32)
    anomaly[2:8, 2:8] = 1.0
    anomaly[12, 12] = 1.0
    regions, _ = find_regions(anomaly, 0.5, IDENTITY, (16, 16), min_area_px=4)
    assert [r.area_px for r in regions] == [36]


def test_pass_has_no_regions_and_fail_has_a_mask():
    anomaly = np.zeros((16, 16), np.float32)
    anomaly[4:8, 4:8] = 1.0
    params = DecisionParams(threshold=0.5, pixel_threshold=0.5, min_region_area_px=1)
    assert decide(anomaly, 0.1, params, IDENTITY, (16, 16)).regions == []
    failed = decide(anomaly, 1.0, params, IDENTITY, (16, 16))
    assert len(failed.regions) == 1 and failed.mask.sum() > 0


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_non_finite_outputs_give_the_fail_safe_verdict(score):
    params = DecisionParams(threshold=0.5, pixel_threshold=0.5)
    decision = decide(np.zeros((4, 4), np.float32), score, params, IDENTITY, (4, 4))
    assert decision.verdict == Verdict.FAIL and decision.score is None and "non-finite" in decision.error


def test_fail_safe_is_configurable_but_never_pass():
    unknown = DecisionParams(threshold=0.5, pixel_threshold=0.5, fail_safe_verdict=Verdict.UNKNOWN)
    assert fail_safe(unknown, "timeout").verdict == Verdict.UNKNOWN
    with pytest.raises(ValueError, match="never PASS"):
        DecisionParams(threshold=0.5, pixel_threshold=0.5, fail_safe_verdict=Verdict.PASS)


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"pixel_threshold": -1.0}, {"sensitivity": 1.5},
                                 {"threshold": float("nan")}])
def test_invalid_parameters_are_refused(bad):
    values = {"threshold": 0.5, "pixel_threshold": 0.5, **bad}
    with pytest.raises(ValueError):
        DecisionParams(**values)


def test_a_fail_below_the_pixel_threshold_still_says_where():
    """The image score failed the part but no pixel reached the pixel threshold (a pixel threshold set far above
    the image one, as the F1-optimal pixel threshold of a coarse map can be): the region is where the map reaches
    the failing score, so a FAIL never comes without a region."""
    anomaly = np.full((32, 32), 0.2, np.float32)
    anomaly[10:16, 20:26] = 1.2  # the defect: above the image threshold, far below the pixel threshold
    anomaly[2, 2] = 1.1  # a lone pixel below the score: not part of the region
    params = DecisionParams(threshold=1.0, pixel_threshold=4.0, min_region_area_px=4)
    failed = decide(anomaly, 1.15, params, IDENTITY, (32, 32))
    assert failed.verdict == Verdict.FAIL
    assert [(r.x, r.y, r.width, r.height) for r in failed.regions] == [(20, 10, 6, 6)]
    assert failed.mask[12, 22] == 255 and failed.mask[2, 2] == 0
    tiny = np.full((32, 32), 0.2, np.float32)
    tiny[5, 5] = 2.0  # a one-pixel peak: kept although below min_region_area_px, it is all there is
    assert len(decide(tiny, 2.0, params, IDENTITY, (32, 32)).regions) == 1
