"""Shared preprocessing: what training, evaluation and the line feed the model."""

import numpy as np
import pytest

from edge_inspector.preprocess import to_model_input


def test_gray_is_copied_to_three_channels_and_stretched():
    gray = np.tile(np.arange(100, dtype=np.uint8), (50, 1))
    out, place = to_model_input(gray, width=40, height=20)
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 2])
    assert (place.x, place.y, place.width, place.height) == (0, 0, 40, 20)


def test_bgr_is_turned_into_rgb():
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    out, _ = to_model_input(bgr, 10, 10)
    assert out[0, 0].tolist() == [0, 0, 255]


def test_letterbox_keeps_aspect_and_says_where_the_image_landed():
    tall = np.full((200, 100), 200, np.uint8)
    out, place = to_model_input(tall, width=64, height=64, resize="letterbox", pad_value=7)
    assert (place.x, place.y, place.width, place.height) == (16, 0, 32, 64)
    assert (place.source_width, place.source_height) == (100, 200)
    inside = np.zeros((64, 64), bool)
    inside[place.y : place.y + place.height, place.x : place.x + place.width] = True
    assert (out[inside] == 200).all() and (out[~inside] == 7).all()


def test_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((4, 4), np.float32), 4, 4)
