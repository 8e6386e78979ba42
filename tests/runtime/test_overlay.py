"""Overlay: heat map where the map is high, outlines, verdict banner; the frame itself is left untouched."""

import numpy as np

from edge_inspector.pipeline.overlay import draw_overlay
from edge_inspector.results import Region, Verdict

SCALE_2 = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])


def test_heat_outlines_and_banner_are_drawn_on_a_copy():
    frame = np.full((120, 160, 3), 100, np.uint8)
    anomaly = np.zeros((60, 80), np.float32)
    anomaly[30:40, 50:70] = 1.0
    region = Region(100, 60, 40, 20, 800, 1.0, [(100, 60), (139, 60), (139, 79), (100, 79)])
    out = draw_overlay(frame, anomaly, SCALE_2, 0.5, Verdict.FAIL, 0.8, [region])
    assert out.shape == frame.shape and (frame == 100).all()
    assert not np.array_equal(out[65:75, 110:130], frame[65:75, 110:130])  # heat inside the defect
    assert np.array_equal(out[100:110, 20:40], frame[100:110, 20:40])  # calm area untouched
    assert tuple(out[60, 120]) != (100, 100, 100)  # outline
    banner = out[2, 2]
    assert banner[2] > banner[1] and banner[2] > banner[0]  # red banner (BGR) for FAIL


def test_failed_inference_still_gets_a_banner_on_gray_frames():
    frame = np.full((50, 60), 30, np.uint8)
    out = draw_overlay(frame, None, SCALE_2, 0.5, Verdict.UNKNOWN, None, [])
    assert out.shape == (50, 60, 3)
    assert tuple(out[2, 2]) == (0, 165, 255)
