"""From raw model outputs to a verdict: normalised score, effective threshold, defect regions, fail-safe.

Pure numpy/cv2 so it can be tested exhaustively and reused by evaluation. Conventions (as anomalib's):

* ``sensitivity`` s in [0, 1] moves the raw threshold t to ``t_eff = t * (1 - s) / s``: 0.5 keeps t, higher values
  reject more, lower values reject less.
* ``normalized = score / (score + t_eff)``: 0.5 exactly at the effective threshold, monotonic, in [0, 1).
  ``normalized >= 0.5`` (i.e. ``score >= t_eff``) is FAIL.
* Regions are computed for FAIL verdicts only, from anomaly-map pixels at or above the pixel threshold, and reported in
  full-frame pixels through the model-to-frame affine map. A FAIL whose map nowhere reaches the pixel threshold
  gets the regions at or above its own score instead (never none: the score cannot exceed the map's peak).
* Any error or timeout gives the configured fail-safe verdict (FAIL or UNKNOWN), never PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_inspector.results import Region, Verdict

SENSITIVITY_LIMIT = 1e-3
"""Sensitivity is clamped to [limit, 1 - limit] so the effective threshold stays finite and positive."""
MAX_REGIONS = 32
"""Largest regions kept per part; more would only bloat the message (the mask still holds every pixel)."""


@dataclass(frozen=True)
class DecisionParams:
    threshold: float
    """Raw image threshold at sensitivity 0.5."""
    pixel_threshold: float
    """Raw anomaly-map value from which a pixel belongs to a defect region."""
    sensitivity: float = 0.5
    min_region_area_px: int = 16
    """Smallest region kept, in full-frame pixels."""
    fail_safe_verdict: Verdict = Verdict.FAIL

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a positive number, got {self.threshold}")
        if not (self.pixel_threshold > 0 and math.isfinite(self.pixel_threshold)):
            raise ValueError(f"pixel_threshold must be a positive number, got {self.pixel_threshold}")
        if not 0.0 <= self.sensitivity <= 1.0:
            raise ValueError(f"sensitivity must lie in [0, 1], got {self.sensitivity}")
        if Verdict(self.fail_safe_verdict) == Verdict.PASS:
            raise ValueError("the fail-safe verdict can be FAIL or UNKNOWN, never PASS")

    @property
    def effective_threshold(self) -> float:
        return effective_threshold(self.threshold, self.sensitivity)


@dataclass
class Decision:
    verdict: Verdict
    score: float | None
    normalized_score: float | None
    threshold: float
    """Effective raw threshold used."""
    regions: list[Region] = field(default_factory=list)
    mask: np.ndarray | None = None
    """uint8 full-frame mask, 255 inside regions (FAIL only)."""
    error: str | None = None


def effective_threshold(threshold: float, sensitivity: float) -> float:
    s = min(max(sensitivity, SENSITIVITY_LIMIT), 1.0 - SENSITIVITY_LIMIT)
    return threshold * (1.0 - s) / s


def normalized_score(score: float, threshold: float) -> float:
    """Map a raw score to [0, 1) with ``threshold`` at 0.5 (negative scores count as 0)."""
    score = max(score, 0.0)
    return score / (score + threshold)


def find_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    model_to_frame: np.ndarray,
    frame_shape: tuple[int, ...],
    min_area_px: int = 0,
) -> tuple[list[Region], np.ndarray]:
    """Connected regions of ``anomaly_map >= pixel_threshold`` in frame pixels, largest first, and their mask.

    Args:
        anomaly_map: (H, W) float map in model-input pixels.
        model_to_frame: 2x3 affine matrix from model pixels to frame pixels.
        frame_shape: shape of the full frame (height, width, ...).
        min_area_px: regions smaller than this (in frame pixels) are dropped.
    """
    binary = (anomaly_map >= pixel_threshold).astype(np.uint8)
    mask = np.zeros(frame_shape[:2], np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    scale = abs(float(np.linalg.det(model_to_frame[:, :2])))  # frame pixels per model pixel
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    regions: list[Region] = []
    for label in order:
        area = int(round(stats[label, cv2.CC_STAT_AREA] * scale))
        if area < min_area_px or len(regions) >= MAX_REGIONS:
            break
        x, y, w, h = (int(v) for v in stats[label, :4])
        component = (labels[y : y + h, x : x + w] == label).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
        # Map pixel centres (index + 0.5) so a stretched map lands centred on the frame pixels it covers.
        centres = contour + (x + 0.5, y + 0.5)
        points = np.round(centres @ model_to_frame[:, :2].T + model_to_frame[:, 2] - 0.5).astype(np.int32)
        bx, by, bw, bh = cv2.boundingRect(points)
        cv2.fillPoly(mask, [points], 255)
        peak = float(anomaly_map[y : y + h, x : x + w][component > 0].max())
        regions.append(Region(bx, by, bw, bh, area, peak, [tuple(point) for point in points.tolist()]))
    return regions, mask


def decide(
    anomaly_map: np.ndarray,
    score: float,
    params: DecisionParams,
    model_to_frame: np.ndarray,
    frame_shape: tuple[int, ...],
) -> Decision:
    """Verdict for one part from the raw engine outputs; a non-finite score gives the fail-safe verdict."""
    threshold = params.effective_threshold
    if not math.isfinite(score) or not np.isfinite(anomaly_map).all():
        return fail_safe(params, "the model returned a non-finite score or map")
    norm = normalized_score(score, threshold)
    if score < threshold:
        return Decision(Verdict.PASS, score, norm, threshold)
    regions, mask = find_regions(anomaly_map, params.pixel_threshold, model_to_frame, frame_shape,
                                 params.min_region_area_px)
    if not regions:
        regions, mask = _where_the_score_came_from(anomaly_map, score, params, model_to_frame, frame_shape)
    return Decision(Verdict.FAIL, score, norm, threshold, regions, mask)


def _where_the_score_came_from(anomaly_map: np.ndarray, score: float, params: DecisionParams,
                               model_to_frame: np.ndarray, frame_shape: tuple[int, ...]) -> tuple[list[Region], np.ndarray]:
    """Regions for a FAIL that no pixel of which reached the pixel threshold: the map at or above the failing
    score itself. The image score aggregates the map (max, top-k mean or mean), so it never exceeds the map's peak
    and this level always holds at least one pixel: a FAIL always says where. Regions below
    ``min_region_area_px`` are dropped unless that would leave none, then the largest is kept."""
    level = min(params.pixel_threshold, score)
    regions, _ = find_regions(anomaly_map, level, model_to_frame, frame_shape)
    kept = [r for r in regions if r.area_px >= params.min_region_area_px] or regions[:1]
    mask = np.zeros(frame_shape[:2], np.uint8)
    for region in kept:
        cv2.fillPoly(mask, [np.array(region.contour, np.int32)], 255)
    return kept, mask


def fail_safe(params: DecisionParams, error: str) -> Decision:
    """The verdict when the model could not judge: never PASS."""
    return Decision(Verdict(params.fail_safe_verdict), None, None, params.effective_threshold, error=error)
