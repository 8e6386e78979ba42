"""Thresholds from scores (numpy only, so both halves can use it).

Two ways to set a threshold on a raw score:

- ``quantile_threshold``: from good images alone, for a target false-reject rate (what a line has on day one);
  ``ThresholdPolicy`` names the two target rates and ``thresholds_from_scores`` turns held-back good scores into
  the manifest's ``Thresholds`` with them.
- ``f1_threshold``: the F1-optimal threshold on labelled scores (when defects with labels exist).

``small_holdout_warning`` says when too few good images were held back for the target rate: the quantile is then
their top score or close to it, and one unusual part sets the threshold for the whole line.

Convention everywhere: ``score >= threshold`` means FAIL / defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_inspector.bundle.manifest import ScoreStats, Thresholds

MIN_GOOD_ABOVE_THRESHOLD = 5
"""A quantile threshold is trusted when at least this many held-back good images are expected above it (n x rate);
below that it rests on the top few scores, so one odd part moves it (a high one lets defects pass)."""

# The manifest requires thresholds > 0; anomaly scores are >= 0, so a degenerate all-zero set still gets a usable value.
_MIN_THRESHOLD = 1e-12


def quantile_threshold(good_scores: np.ndarray, target_false_reject_rate: float) -> float:
    """Threshold that rejects about ``target_false_reject_rate`` of good parts.

    Uses the empirical (1 - rate) quantile of the good scores, taking the next observed value above it
    (``method='higher'``) so that on these scores the rejected fraction never exceeds the target.
    Scores exactly at the top are nudged up by one float step so ``score >= threshold`` holds for none of them
    when the target is 0.

    Args:
        good_scores: raw scores of known-good images (any shape; flattened).
        target_false_reject_rate: fraction of good parts one accepts to reject, in [0, 1).

    Raises:
        ValueError: empty scores or a rate outside [0, 1).
    """
    scores = np.asarray(good_scores, np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no good scores to set a threshold from")
    if not 0 <= target_false_reject_rate < 1:
        raise ValueError(f"target_false_reject_rate must be in [0, 1), got {target_false_reject_rate}")
    value = float(np.quantile(scores, 1.0 - target_false_reject_rate, method="higher"))
    # score >= threshold fails: step just above the chosen good score so it (and ties) still pass.
    threshold = float(np.nextafter(value, np.inf))
    return max(threshold, _MIN_THRESHOLD)


def small_holdout_warning(n_good: int, target_false_reject_rate: float) -> str | None:
    """Why a quantile threshold from ``n_good`` held-back good images is unreliable at this rate, or None when it is
    not (``MIN_GOOD_ABOVE_THRESHOLD``). For a person: what the threshold rests on and what to do about it."""
    expected_above = n_good * target_false_reject_rate
    if target_false_reject_rate <= 0 or expected_above >= MIN_GOOD_ABOVE_THRESHOLD:
        return None
    needed = int(np.ceil(MIN_GOOD_ABOVE_THRESHOLD / target_false_reject_rate))
    rests_on = "the highest score" if expected_above < 1 else "set by the top few scores"
    return (f"the image threshold is {rests_on} of only {n_good} held-back good images (a "
            f"{target_false_reject_rate:g} false-reject rate needs about {needed}): one unusual part sets it, and a "
            "high one lets defects pass. Check it on labelled parts before the line relies on it: 'edge-inspector "
            "eval' shows what each false-reject rate would catch, 'eval --write-thresholds' sets it on a labelled "
            "set (not the one you report on); or hold back more good images (train.holdout_fraction)")


def manifest_threshold_warning(thresholds: Thresholds, image_stats: ScoreStats | None) -> str | None:
    """``small_holdout_warning`` for a manifest's image threshold: None unless it is a quantile of the held-back
    good scores ``image_stats`` describes (F1 and hand-set thresholds do not rest on the holdout)."""
    rate = thresholds.target_false_reject_rate
    if thresholds.image_method != "quantile" or rate is None or image_stats is None:
        return None
    return small_holdout_warning(image_stats.n, rate)


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """F1-optimal threshold on labelled scores.

    Every distinct score is a candidate threshold; the one with the highest F1 for ``score >= threshold`` wins
    (the highest threshold among ties, i.e. the most conservative against false rejects).

    Args:
        scores: raw scores (any shape; flattened).
        labels: same shape; truthy = defect.

    Returns:
        (threshold, f1).

    Raises:
        ValueError: shapes differ or there is no positive label.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("no positive (defect) labels: an F1 threshold needs defects")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Only the last index of each run of equal scores is a valid cut (ties fall on the same side).
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp, fp, cut = tp[last], fp[last], s_sorted[last]
    f1 = 2 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    return max(float(cut[best]), _MIN_THRESHOLD), float(f1[best])


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of ``score >= threshold`` against ``labels``."""
    pred = np.asarray(scores).ravel() >= threshold
    y = np.asarray(labels).astype(bool).ravel()
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass(frozen=True)
class ThresholdPolicy:
    """How thresholds are set from the held-back normal training images."""

    image_false_reject_rate: float = 0.01
    """Target fraction of good parts rejected (image score quantile)."""
    pixel_false_positive_rate: float = 0.001
    """Target fraction of normal pixels above the region threshold (anomaly map quantile)."""

    @classmethod
    def of(cls, thresholds: Thresholds) -> ThresholdPolicy | None:
        """The policy ``thresholds`` were set with, or None when they were not quantiles of good scores (F1 on a
        labelled set, or set by hand). A rate the manifest does not record takes its default."""
        if thresholds.image_method != "quantile" or thresholds.target_false_reject_rate is None:
            return None
        if thresholds.pixel_method != "quantile":
            return None
        pixel = thresholds.target_pixel_false_positive_rate
        return cls(thresholds.target_false_reject_rate,
                   cls.pixel_false_positive_rate if pixel is None else pixel)


def thresholds_from_scores(image_scores: np.ndarray, pixel_values: np.ndarray, policy: ThresholdPolicy) -> Thresholds:
    """Image and pixel thresholds from normal holdout scores alone (no defects needed).

    Args:
        image_scores: raw image scores of held-back good images.
        pixel_values: anomaly-map values of the same images (or a sample of them).
        policy: the target rates.
    """
    return Thresholds(
        image=quantile_threshold(image_scores, policy.image_false_reject_rate),
        image_method="quantile",
        target_false_reject_rate=policy.image_false_reject_rate,
        pixel=quantile_threshold(pixel_values, policy.pixel_false_positive_rate),
        pixel_method="quantile",
        target_pixel_false_positive_rate=policy.pixel_false_positive_rate,
    )
