"""Grouped holdout: part names from file names, frame-number runs, whole groups per side, near-duplicate guard."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.cli import main
from edge_inspector.data.folders import Category, holdout_split, scan_category
from edge_inspector.data.groups import group_keys, near_duplicates, split_by_group
from edge_inspector.errors import DataError
from edge_inspector.model.presets import TrainSpec
from edge_inspector.workflows.train import holdout_report


def test_group_keys_from_capture():
    paths = [Path(f"part{p:02d}_view{v}.png") for p in range(3) for v in range(2)]
    assert group_keys(paths, r"part(\d+)_") == ["00", "00", "01", "01", "02", "02"]


def test_group_gap_joins_frame_runs():
    # three parts photographed in runs of frames: 100-104, 400-402 and 1000
    names = [f"exp{e}_num_{n}.jpg" for e, n in enumerate([100, 104, 400, 1000, 402, 102])]
    assert group_keys([Path(n) for n in names], r"num_(\d+)", gap=150) == ["100", "100", "400", "1000", "400", "100"]


@pytest.mark.parametrize("pattern, gap, message", [
    (r"part(\d+", None, "not a valid regular expression"),
    (r"part\d+", None, "no capture group"),
    (r"lot(\d+)", None, "matches no part name in 2 of 2 file names, e.g. part1_a.png"),
    (r"part(\w)", 5, "capture an integer"),
])
def test_group_keys_refuses_bad_patterns(pattern, gap, message):
    with pytest.raises(DataError, match=message):
        group_keys([Path("part1_a.png"), Path("partx_b.png")], pattern, gap)


def _paths_and_groups(n_groups=20, per_group=5):
    paths = [Path(f"g{g:02d}_{i}.png") for g in range(n_groups) for i in range(per_group)]
    return paths, [p.name[:3] for p in paths]


def test_split_keeps_groups_whole_and_reaches_the_fraction():
    paths, groups = _paths_and_groups()
    fit, holdout = split_by_group(paths, groups, 0.2, seed=3)
    assert sorted(fit + holdout) == sorted(paths)
    held_groups = {p.name[:3] for p in holdout}
    assert held_groups.isdisjoint({p.name[:3] for p in fit})
    assert len(holdout) == 20 and len(held_groups) == 4


def test_split_is_seeded_and_independent_of_listing_order():
    paths, groups = _paths_and_groups()
    first = split_by_group(paths, groups, 0.3, seed=1)
    assert split_by_group(paths[::-1], groups[::-1], 0.3, seed=1) == first
    assert split_by_group(paths, groups, 0.3, seed=2) != first


def test_split_refuses_a_single_group():
    paths = [Path(f"a_{i}.png") for i in range(4)]
    with pytest.raises(DataError, match="fall in one group"):
        split_by_group(paths, ["a"] * 4, 0.25, seed=0)


def _write(path: Path, image: np.ndarray) -> Path:
    cv2.imwrite(str(path), image)
    return path


def test_near_duplicates_flags_another_exposure_of_a_fit_image(tmp_path):
    rng = np.random.default_rng(0)
    # smooth random textures: distinct images correlate weakly, an exposure change keeps the correlation at ~1
    textures = [cv2.GaussianBlur(rng.integers(0, 255, (64, 64), dtype=np.uint8), (0, 0), 3) for _ in range(6)]
    fit = [_write(tmp_path / f"fit{i}.png", t) for i, t in enumerate(textures[:4])]
    brighter = np.clip(textures[1].astype(np.float32) * 1.3 + 20, 0, 255).astype(np.uint8)
    holdout = [_write(tmp_path / "held_sibling.png", brighter), _write(tmp_path / "held_other.png", textures[5])]
    report = near_duplicates(fit, holdout)
    assert report.n_holdout == 2 and report.n_with_duplicate == 1
    assert report.examples[0][:2] == ("held_sibling.png", "fit1.png")
    assert report.share == 0.5


def _category_of_parts(root: Path, parts: int = 6, exposures: int = 3) -> Category:
    """train/good holds every part under several exposures (part<p>_exp<e>.png): siblings of one part."""
    rng = np.random.default_rng(1)
    (root / "train" / "good").mkdir(parents=True)
    for p in range(parts):
        texture = cv2.GaussianBlur(rng.integers(0, 255, (48, 48), dtype=np.uint8), (0, 0), 2).astype(np.float32)
        for e in range(exposures):
            image = np.clip((texture - texture.mean()) * (0.8 + 0.2 * e) + 100 + 15 * e, 0, 255).astype(np.uint8)
            _write(root / "train" / "good" / f"part{p}_exp{e}.png", image)
    return scan_category(root)


def test_holdout_split_takes_whole_parts_when_grouped(tmp_path):
    category = _category_of_parts(tmp_path)
    fit, held = holdout_split(category, TrainSpec(holdout_fraction=0.3, group_by=r"part(\d+)_"))
    part = lambda p: p.name.split("_")[0]  # noqa: E731
    assert {part(p) for p in held}.isdisjoint({part(p) for p in fit})
    assert len(held) == 6  # two whole parts: 30 % of 18 images, rounded up to whole parts
    with pytest.raises(DataError, match="group_gap needs train.group_by"):
        holdout_split(category, TrainSpec(group_gap=3))


def test_holdout_report_warns_when_held_back_images_have_siblings_in_the_fit_set(tmp_path):
    category = _category_of_parts(tmp_path)
    image_wise = TrainSpec(holdout_fraction=0.3)
    report = holdout_report(*holdout_split(category, image_wise), image_wise)
    assert "image by image" in report and "warning" in report and "--group-by" in report
    grouped = TrainSpec(holdout_fraction=0.3, group_by=r"part(\d+)_")
    report = holdout_report(*holdout_split(category, grouped), grouped)
    assert "by part (group_by 'part(\\\\d+)_')" in report and "0 have a near-duplicate" in report
    assert "warning" not in report


def test_train_refuses_a_group_pattern_that_names_no_part(tmp_path, capsys):
    category = _category_of_parts(tmp_path / "parts")
    rc = main(["train", "--data", str(category.root), "--out", str(tmp_path / "b"), "--group-by", r"lot(\d+)",
               "--no-progress", "model.width=64", "model.height=64"])
    assert rc == 2
    assert "matches no part name in 18 of 18 file names" in capsys.readouterr().err
