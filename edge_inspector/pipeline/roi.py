"""Region of interest: what part of the frame the model sees, and the way back to full-frame coordinates.

The ROI is a rectangle in the frame, rotated about its centre by ``rotation_deg`` (counter-clockwise), sampled into an
upright ``width x height`` image. Together with the resize into the model (``preprocess.Placement``) this gives one
affine map from model pixels to frame pixels, used for regions, masks and overlays.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_inspector.config import RoiSettings
from edge_inspector.errors import ConfigError
from edge_inspector.preprocess import Placement


class RoiMapper:
    """Cuts the ROI out of frames and maps points back to full-frame pixels.

    Args:
        roi: the station's ROI; None = the whole frame.
    """

    def __init__(self, roi: RoiSettings | None):
        self.roi = roi
        self._checked_shape: tuple[int, int] | None = None

    def _check(self, frame_shape: tuple[int, ...]) -> None:
        height, width = frame_shape[:2]
        if self._checked_shape == (height, width) or self.roi is None:
            return
        r = self.roi
        if r.x + r.width > width or r.y + r.height > height:
            raise ConfigError(
                f"roi (x={r.x}, y={r.y}, width={r.width}, height={r.height}) lies outside the {width}x{height} frame"
            )
        self._checked_shape = (height, width)

    def frame_to_roi(self) -> np.ndarray:
        """2x3 affine matrix from frame pixels to ROI-image pixels."""
        r = self.roi
        if r is None:
            return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        centre = (r.x + r.width / 2.0, r.y + r.height / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, r.rotation_deg, 1.0)
        matrix[0, 2] += r.width / 2.0 - centre[0]
        matrix[1, 2] += r.height / 2.0 - centre[1]
        return matrix

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """The ROI image (a view for a plain crop, a warped copy when rotated)."""
        if self.roi is None:
            return frame
        self._check(frame.shape)
        r = self.roi
        if r.rotation_deg == 0:
            return frame[r.y : r.y + r.height, r.x : r.x + r.width]
        return cv2.warpAffine(frame, self.frame_to_roi(), (r.width, r.height), flags=cv2.INTER_LINEAR)

    def model_to_frame(self, placement: Placement) -> np.ndarray:
        """2x3 affine matrix from model-input pixels to full-frame pixels."""
        sx = placement.source_width / placement.width
        sy = placement.source_height / placement.height
        model_to_roi = np.array([[sx, 0.0, -placement.x * sx], [0.0, sy, -placement.y * sy], [0.0, 0.0, 1.0]])
        roi_to_frame = np.vstack([cv2.invertAffineTransform(self.frame_to_roi()), [0.0, 0.0, 1.0]])
        return (roi_to_frame @ model_to_roi)[:2]

    def outline(self) -> np.ndarray | None:
        """The ROI's four corners in frame pixels (int32 (4, 2)), for drawing; None without an ROI."""
        if self.roi is None:
            return None
        r = self.roi
        corners = np.array([[0, 0], [r.width, 0], [r.width, r.height], [0, r.height]], np.float64)
        return np.round(transform_points(cv2.invertAffineTransform(self.frame_to_roi()), corners)).astype(np.int32)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]
