"""CutPaste augmentations: seeded, change only a patch, keep dtype and shape, refuse bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.data.augment import cutpaste_batch, cutpaste_normal, cutpaste_scar


def texture(h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("augment", [cutpaste_normal, cutpaste_scar])
def test_seeded_and_local(augment):
    image = texture()
    a = augment(image, np.random.default_rng(3))
    b = augment(image, np.random.default_rng(3))
    c = augment(image, np.random.default_rng(4))
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    changed = (a != image).any(axis=2).mean()
    assert 0 < changed < 0.3
    assert np.array_equal(image, texture())  # the input is never modified


def test_normal_patch_area_and_scar_is_thin():
    rng = np.random.default_rng(0)
    image = texture(256, 256)
    normal_areas = [(cutpaste_normal(image, rng) != image).any(axis=2).mean() for _ in range(20)]
    scar_areas = [(cutpaste_scar(image, rng) != image).any(axis=2).mean() for _ in range(20)]
    assert max(normal_areas) <= 0.16 and np.mean(normal_areas) > 0.02
    assert max(scar_areas) < 0.01


def test_batch_order_and_labels():
    originals = np.stack([texture(), texture() // 2])
    batch, labels = cutpaste_batch(originals, np.random.default_rng(0))
    assert batch.shape == (6, 96, 128, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(batch[:2], originals)


def test_refuses_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        cutpaste_normal(texture().astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="RGB"):
        cutpaste_scar(texture()[..., 0], np.random.default_rng(0))
