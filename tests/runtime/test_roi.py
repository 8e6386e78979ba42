"""ROI: crop and rotation before the model, and the exact way back to full-frame pixels."""

import cv2
import numpy as np
import pytest

from edge_inspector.config import RoiSettings
from edge_inspector.errors import ConfigError
from edge_inspector.pipeline.roi import RoiMapper, transform_points
from edge_inspector.preprocess import to_model_input


def _frame_with_dot(x, y, shape=(240, 320)):
    frame = np.zeros((*shape, 3), np.uint8)
    cv2.circle(frame, (x, y), 3, (255, 255, 255), -1)
    return frame


def _brightest(image):
    gray = image if image.ndim == 2 else image[..., 0]
    y, x = np.unravel_index(np.argmax(cv2.GaussianBlur(gray.astype(np.float32), (7, 7), 0)), gray.shape)
    return np.array([x, y], np.float64)


def test_no_roi_is_the_whole_frame_and_maps_a_stretch_back():
    mapper = RoiMapper(None)
    frame = _frame_with_dot(200, 60)
    assert mapper.cut(frame) is frame
    model, placement = to_model_input(frame, 64, 64)
    found = transform_points(mapper.model_to_frame(placement), [_brightest(model) + 0.5])[0] - 0.5
    assert np.allclose(found, [200, 60], atol=5)
    assert mapper.outline() is None


def test_plain_crop_is_a_view_and_maps_back():
    mapper = RoiMapper(RoiSettings(x=100, y=40, width=120, height=80))
    frame = _frame_with_dot(150, 70)
    roi = mapper.cut(frame)
    assert roi.shape == (80, 120, 3) and np.shares_memory(roi, frame)
    model, placement = to_model_input(roi, 60, 40)
    found = transform_points(mapper.model_to_frame(placement), [_brightest(model) + 0.5])[0] - 0.5
    assert np.allclose(found, [150, 70], atol=3)


@pytest.mark.parametrize("angle", [30.0, 90.0, -45.0])
def test_rotated_roi_round_trips_points(angle):
    roi = RoiSettings(x=80, y=60, width=160, height=120, rotation_deg=angle)
    mapper = RoiMapper(roi)
    frame = _frame_with_dot(170, 110)  # near the ROI centre (160, 120), inside for every angle
    cut = mapper.cut(frame)
    assert cut.shape == (120, 160, 3)
    model, placement = to_model_input(cut, 80, 60, resize="letterbox")
    found = transform_points(mapper.model_to_frame(placement), [_brightest(model) + 0.5])[0] - 0.5
    assert np.allclose(found, [170, 110], atol=4)
    corners = mapper.outline()
    assert corners.shape == (4, 2)
    assert np.allclose(corners.mean(axis=0), [160, 120], atol=1)


def test_rotation_is_counter_clockwise():
    # A dot right of the centre appears above the centre once the ROI is rotated 90 degrees counter-clockwise.
    mapper = RoiMapper(RoiSettings(x=60, y=20, width=200, height=200, rotation_deg=90.0))
    cut = mapper.cut(_frame_with_dot(200, 120))  # ROI centre (160, 120), dot 40 px right of it
    x, y = _brightest(cut)
    assert abs(x - 100) <= 2 and abs(y - 60) <= 2


def test_roi_outside_the_frame_is_a_clear_error():
    mapper = RoiMapper(RoiSettings(x=300, y=0, width=100, height=50))
    with pytest.raises(ConfigError, match="outside the 320x240 frame"):
        mapper.cut(np.zeros((240, 320, 3), np.uint8))
