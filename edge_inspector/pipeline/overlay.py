"""The picture an operator sees: the frame with the anomaly heat map, defect outlines and the verdict. Pure cv2."""

from __future__ import annotations

import cv2
import numpy as np

from edge_inspector.results import Region, Verdict

_COLOURS = {Verdict.PASS: (60, 180, 60), Verdict.FAIL: (40, 40, 230), Verdict.UNKNOWN: (0, 165, 255)}  # BGR
HEAT_ALPHA = 0.45
TINT_FROM = 0.9
"""The heat map is drawn where the anomaly map reaches this fraction of the pixel threshold."""


def draw_overlay(
    frame: np.ndarray,
    anomaly_map: np.ndarray | None,
    model_to_frame: np.ndarray,
    pixel_threshold: float,
    verdict: Verdict,
    normalized_score: float | None,
    regions: list[Region],
    roi_outline: np.ndarray | None = None,
) -> np.ndarray:
    """A BGR copy of ``frame`` with the heat map (where the map nears the pixel threshold), outlines and verdict.

    Args:
        anomaly_map: (H, W) raw map in model pixels; None when inference failed.
        model_to_frame: 2x3 affine matrix from model pixels to frame pixels.
        pixel_threshold: map value drawn at mid-scale of the colour map.
        roi_outline: int32 (4, 2) ROI corners in frame pixels, drawn as a thin frame.
    """
    image = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    height, width = image.shape[:2]
    if anomaly_map is not None:
        heat = cv2.warpAffine(anomaly_map.astype(np.float32), model_to_frame, (width, height),
                              flags=cv2.INTER_LINEAR, borderValue=0.0)
        level = cv2.convertScaleAbs(heat, alpha=127.5 / pixel_threshold)  # saturating cast to uint8 in one pass
        coloured = cv2.applyColorMap(level, cv2.COLORMAP_JET)
        # Only tint where the map nears the pixel threshold, so the part itself stays readable: a map raised a
        # little everywhere (large receptive fields, a coarse location grid) must not colour the whole part.
        _, hot = cv2.threshold(level, 127.5 * TINT_FROM, 255, cv2.THRESH_BINARY)
        cv2.copyTo(cv2.addWeighted(image, 1 - HEAT_ALPHA, coloured, HEAT_ALPHA, 0), hot, image)
    if roi_outline is not None:
        cv2.polylines(image, [roi_outline], True, (200, 200, 200), 1, cv2.LINE_AA)
    colour = _COLOURS[verdict]
    for region in regions:
        if region.contour:
            cv2.polylines(image, [np.array(region.contour, np.int32)], True, colour, 2, cv2.LINE_AA)
        else:
            cv2.rectangle(image, (region.x, region.y), (region.x + region.width, region.y + region.height), colour, 2)
    text = verdict.value if normalized_score is None else f"{verdict.value} {normalized_score:.2f}"
    scale = max(0.5, min(width, height) / 500)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.rectangle(image, (0, 0), (tw + 12, th + base + 12), colour, -1)
    cv2.putText(image, text, (6, th + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return image
