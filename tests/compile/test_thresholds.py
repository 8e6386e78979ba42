"""Thresholds from good scores (quantile for a false-reject rate) and from labelled scores (F1-optimal)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.bundle.manifest import Thresholds
from edge_inspector.bundle.thresholds import (MIN_GOOD_ABOVE_THRESHOLD, f1_at, f1_threshold,
                                              manifest_threshold_warning, quantile_threshold, small_holdout_warning)
from edge_inspector.model.normal_stats import score_stats


def test_quantile_threshold_meets_the_target_rate():
    good = np.arange(1, 101, dtype=np.float64)  # 1..100
    t = quantile_threshold(good, 0.05)
    assert np.mean(good >= t) <= 0.05
    assert 95 < t < 97  # rejects exactly 96..100 minus the chosen one: 4 of 100
    t0 = quantile_threshold(good, 0.0)
    assert t0 > 100 and not np.any(good >= t0)


def test_quantile_threshold_is_positive_and_checks_input():
    assert quantile_threshold(np.zeros(10), 0.1) > 0
    with pytest.raises(ValueError):
        quantile_threshold(np.array([]), 0.1)
    with pytest.raises(ValueError):
        quantile_threshold(np.ones(3), 1.0)


def test_a_small_holdout_is_named_where_the_quantile_is_its_top_scores():
    # 70 held-back goods at 1 %: the 'higher' 0.99 quantile is their maximum, which is what the warning says
    good = np.arange(70, dtype=np.float64)
    assert quantile_threshold(good, 0.01) > good.max() - 1
    warning = small_holdout_warning(70, 0.01)
    assert "highest score of only 70" in warning and "about 500" in warning and "--write-thresholds" in warning
    assert "top few" in small_holdout_warning(300, 0.01)  # 3 expected above: still too few
    assert small_holdout_warning(int(MIN_GOOD_ABOVE_THRESHOLD / 0.01), 0.01) is None  # 5 expected above: trusted
    assert small_holdout_warning(70, 0.1) is None  # 7 expected above
    assert small_holdout_warning(70, 0.0) is None  # rate 0 asks for the maximum on purpose


def test_only_quantile_thresholds_rest_on_the_holdout():
    stats = score_stats(np.arange(70, dtype=np.float64))
    quantile = Thresholds(image=70.0, target_false_reject_rate=0.01, pixel=1.0)
    assert "of only 70 held-back" in manifest_threshold_warning(quantile, stats)
    f1 = quantile.model_copy(update={"image_method": "f1"})  # set on labelled parts: not the holdout's business
    assert manifest_threshold_warning(f1, stats) is None
    assert manifest_threshold_warning(quantile, None) is None  # no holdout figures recorded


def test_f1_threshold_hand_computed():
    # scores:  0.1 0.2 0.3 0.4 0.5 0.6 ; labels: 0 0 1 0 1 1
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 0, 1, 0, 1, 1])
    # t=0.5: tp=2 fp=0 fn=1 -> F1 = 4/5 = 0.8 ; t=0.3: tp=3 fp=1 fn=0 -> 6/7 = 0.857 (best)
    t, f1 = f1_threshold(scores, labels)
    assert t == pytest.approx(0.3) and f1 == pytest.approx(6 / 7)
    at = f1_at(scores, labels, t)
    assert at == pytest.approx({"precision": 0.75, "recall": 1.0, "f1": 6 / 7})


def test_f1_threshold_ties_fall_on_one_side():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    labels = np.array([1, 0, 1, 0])
    t, f1 = f1_threshold(scores, labels)  # the only cuts: >=0.5 (tp2 fp1 -> 0.8) or >=0.1 (tp2 fp2 -> 2/3)
    assert t == 0.5 and f1 == pytest.approx(0.8)


def test_f1_threshold_needs_positives_and_matching_shapes():
    with pytest.raises(ValueError, match="positive"):
        f1_threshold(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="differ"):
        f1_threshold(np.ones(3), np.ones(4))
    assert f1_at(np.ones(2), np.zeros(2), 5.0)["f1"] == 0.0
