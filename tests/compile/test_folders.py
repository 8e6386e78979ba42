"""MVTec-layout folders: scanning, holdout split, loading through the shared preprocessing, masks, fingerprint."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_inspector.data.folders import (
    data_fingerprint,
    load_images,
    load_mask,
    load_test_set,
    scan_category,
    split_holdout,
)
from edge_inspector.errors import DataError
from edge_inspector.preprocess import to_model_input
from tests.fixtures.synthetic_dataset import write_synthetic_category


@pytest.fixture()
def category_dir(tmp_path):
    return write_synthetic_category(tmp_path / "tiles", n_train=10, n_test_good=3, n_test_defect=2)


def test_scan_finds_train_test_and_masks(category_dir):
    cat = scan_category(category_dir, require_test=True)
    assert cat.name == "tiles"
    assert len(cat.train) == 10
    assert cat.defect_types == ["scratch", "stain"]
    assert sum(s.is_anomalous for s in cat.test) == 4
    for sample in cat.test:
        if sample.is_anomalous:
            assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
        else:
            assert sample.mask_path is None


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "train" / "good").rename(root / "train" / "ok"), "train/good is missing"),
    (lambda root: [p.unlink() for p in (root / "train" / "good").iterdir()], "holds no images"),
    (lambda root: next((root / "ground_truth" / "stain").iterdir()).unlink(), "Mask missing"),
])
def test_wrong_layout_is_a_clear_data_error(category_dir, break_it, message):
    break_it(category_dir)
    with pytest.raises(DataError, match=message):
        scan_category(category_dir)


def test_missing_folder_and_one_sided_test_set(tmp_path, category_dir):
    with pytest.raises(DataError, match="not found"):
        scan_category(tmp_path / "nope")
    for path in (category_dir / "test" / "good").iterdir():
        path.unlink()
    scan_category(category_dir)  # training does not need a test split
    with pytest.raises(DataError, match="both good and defective"):
        scan_category(category_dir, require_test=True)


def test_unreadable_image_names_the_file(category_dir):
    bad = category_dir / "train" / "good" / "000.png"
    bad.write_bytes(b"not an image")
    cat = scan_category(category_dir)
    with pytest.raises(DataError, match="000.png"):
        load_images(cat.train, 32, 32)


def test_holdout_is_seeded_disjoint_and_order_independent(category_dir):
    paths = scan_category(category_dir).train
    fit, held = split_holdout(paths, 0.2, seed=3)
    assert len(held) == 2 and len(fit) == 8
    assert not set(fit) & set(held) and set(fit) | set(held) == set(paths)
    assert split_holdout(list(reversed(paths)), 0.2, seed=3) == (fit, held)
    other = [split_holdout(paths, 0.2, seed=s)[1] for s in range(6)]
    assert any(h != held for h in other)
    with pytest.raises(DataError):
        split_holdout(paths[:1], 0.5, seed=0)
    with pytest.raises(DataError):
        split_holdout(paths, 1.0, seed=0)


def test_images_go_through_the_shared_preprocessing(category_dir):
    paths = scan_category(category_dir).train[:3]  # 000 is gray on disk, 001/002 colour
    images = load_images(paths, 48, 32)
    assert images.shape == (3, 32, 48, 3) and images.dtype == np.uint8
    for path, image in zip(paths, images):
        expected, _ = to_model_input(cv2.imread(str(path), cv2.IMREAD_COLOR), 48, 32)
        np.testing.assert_array_equal(image, expected)
    assert np.array_equal(images[0][..., 0], images[0][..., 2])  # gray -> three equal channels


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_masks_follow_image_geometry_and_stay_binary(category_dir, resize):
    cat = scan_category(category_dir)
    sample = next(s for s in cat.test if s.defect == "stain")
    mask = load_mask(sample, 64, 64, resize)
    assert mask.dtype == bool and mask.any()
    # The defect (value 0 on a textured surface) lies where the mask says, in model coordinates.
    image = load_images([sample.path], 64, 64, resize)[0].astype(int)
    assert image[mask].mean() < image[~mask].mean() - 30
    if resize == "letterbox":  # 96x80 into 64x64: rows above and below are padding, never defect
        assert not mask[:4].any() and not mask[-4:].any()
    images, masks = load_test_set(cat, 64, 64, resize)
    assert images.shape == (len(cat.test), 64, 64, 3) and masks.shape == (len(cat.test), 64, 64)
    assert not masks[[not s.is_anomalous for s in cat.test]].any()


def test_fingerprint_changes_with_the_data(category_dir):
    paths = scan_category(category_dir).train
    first = data_fingerprint(paths, category_dir)
    assert first == data_fingerprint(list(reversed(paths)), category_dir) and len(first) == 64
    assert data_fingerprint(paths[:-1], category_dir) != first
    with open(paths[0], "ab") as handle:
        handle.write(b"\0")
    assert data_fingerprint(paths, category_dir) != first
