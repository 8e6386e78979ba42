"""A category without ``ground_truth/`` (image-level labels only, like ELPV): scanned, evaluated on image figures.

Many plant sets and public ones (ELPV solar cells) label whole images, not pixels. ``eval`` must still give image
AUROC overall and per type, leave out the pixel figures rather than compute them against empty masks, and write
only the image threshold when asked for F1-optimal thresholds.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from edge_inspector.bundle.store import load_bundle
from edge_inspector.cli import main
from edge_inspector.data.folders import load_images, scan_category, split_holdout
from edge_inspector.errors import DataError
from edge_inspector.export.onnx_export import export_bundle
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import AnomalyScorer
from tests.compile.stand_in_model import StandInModel
from tests.fixtures.synthetic_dataset import write_synthetic_category

torch.set_num_threads(1)
SIZE = 64


@pytest.fixture(scope="module")
def image_level(tmp_path_factory):
    root = write_synthetic_category(tmp_path_factory.mktemp("data") / "cells", n_train=12, n_test_good=4,
                                    n_test_defect=3)
    shutil.rmtree(root / "ground_truth")
    return root


@pytest.fixture(scope="module")
def bundle(image_level, tmp_path_factory):
    """A stand-in scorer's bundle, normal statistics from the holdout of train/good."""
    _, holdout_paths = split_holdout(scan_category(image_level).train, 0.25, seed=0)
    holdout = load_images(holdout_paths, SIZE, SIZE)
    scorer = AnomalyScorer(StandInModel(), SIZE, SIZE, "max", blur_sigma=1.0)
    stats = fit_normal_statistics(scorer, holdout)
    return export_bundle(scorer, tmp_path_factory.mktemp("bundle") / "b", "cells-stand-in", "stretch", stats,
                         stats.thresholds(), None, holdout).path


def test_scan_without_ground_truth_has_no_masks(image_level, tmp_path):
    category = scan_category(image_level, require_test=True)
    assert category.defect_types == ["scratch", "stain"] and not category.has_masks
    assert all(s.mask_path is None for s in category.test)
    # A ground_truth/ folder that exists still needs every mask: a half-labelled set is an error, not image-level.
    partial = shutil.copytree(image_level, tmp_path / "partial")
    (partial / "ground_truth" / "scratch").mkdir(parents=True)
    with pytest.raises(DataError, match="Mask missing"):
        scan_category(partial)


def test_eval_reports_image_figures_only(image_level, bundle, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(bundle), "--data", str(image_level), "--out", str(out), "--no-progress",
                 "--overlays", "2"]) == 0
    result = json.loads((out / "result.json").read_text())
    for group in ("overall", "scratch", "stain"):
        figures = result["metrics"][group]
        assert 0 <= figures["image_auroc"] <= 1 and "image_f1" in figures
        assert not {"pixel_auroc", "aupro", "pixel_f1"} & set(figures)
    assert set(result["mean_over_types"]) == {"image_auroc", "image_f1"}
    assert result["metrics"]["overall"]["n_defective"] == 6
    assert "mean over types" in capsys.readouterr().out
    assert (out / "images.csv").is_file() and len(list((out / "overlays").glob("*.png"))) == 2


def test_write_thresholds_sets_the_image_threshold_only(image_level, bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "b")
    pixel_before = load_bundle(copy).manifest.thresholds.pixel
    assert main(["eval", "--model", str(copy), "--data", str(image_level), "--out", str(tmp_path / "e"),
                 "--no-progress", "--overlays", "0", "--write-thresholds"]) == 0
    assert "pixel" not in capsys.readouterr().out.split("thresholds  image")[1].splitlines()[0]
    chosen = load_bundle(copy).manifest.thresholds
    assert chosen.image_method == "f1" and chosen.pixel == pixel_before and chosen.pixel_method != "f1"
