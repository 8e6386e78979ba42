"""The ``train``, ``export`` and ``eval`` commands end to end on a tiny synthetic MVTec-layout dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_inspector.bundle.store import load_bundle
from edge_inspector.cli import main
from edge_inspector.data.folders import scan_category, split_holdout
from edge_inspector.export.onnx_export import ThresholdPolicy, export_bundle, thresholds_from_normal
from edge_inspector.training.scoring import AnomalyScorer, fit_normal_statistics
from tests.compile.stand_in_model import StandInModel
from tests.fixtures.synthetic_dataset import write_synthetic_category

torch.set_num_threads(1)
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_category(tmp_path_factory.mktemp("data") / "tiles", n_train=12, n_test_good=4,
                                    n_test_defect=3)


@pytest.fixture(scope="module")
def stand_in_bundle(dataset, tmp_path_factory):
    """A bundle of the stand-in scorer, normal statistics from the holdout of the synthetic train/good."""
    from edge_inspector.data.folders import load_images

    category = scan_category(dataset)
    _, holdout_paths = split_holdout(category.train, 0.25, seed=0)
    holdout = load_images(holdout_paths, SIZE, SIZE)
    scorer = AnomalyScorer(StandInModel(), SIZE, SIZE, "max", blur_sigma=1.0)
    stats = fit_normal_statistics(scorer, holdout)
    bundle = export_bundle(scorer, tmp_path_factory.mktemp("bundle") / "b", "tiles-stand-in", "stretch", stats,
                           thresholds_from_normal(stats, ThresholdPolicy()), None, holdout)
    return bundle


def test_eval_bundle_through_onnxruntime(dataset, stand_in_bundle, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(stand_in_bundle.path), "--data", str(dataset), "--out", str(out),
               "--no-progress", "--overlays", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "scratch" in printed and "stain" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["engine"] == "onnxruntime" and result["aggregation"] == "max"
    overall = result["metrics"]["overall"]
    assert overall["n_images"] == 10 and overall["n_defective"] == 6
    # The stand-in sees pasted scratches and stains on a texture: clearly better than chance at image and pixel level.
    assert overall["image_auroc"] > 0.8 and overall["pixel_auroc"] > 0.8
    assert {"image_auroc_mean", "image_auroc_max", "image_auroc_topk", "aupro", "image_f1"} <= set(overall)
    assert result["latency_ms"]["n"] == 10
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert (out / "table.txt").read_text().startswith("tiles:")


def test_eval_refuses_what_it_cannot_use(dataset, stand_in_bundle, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(dataset)]) == 2
    assert "no such bundle" in capsys.readouterr().err
    assert main(["eval", "--model", str(stand_in_bundle.path), "--data", str(tmp_path)]) == 2
    assert "train/good is missing" in capsys.readouterr().err
    assert main(["eval", "--model", str(stand_in_bundle.path), "--data", str(dataset), "--engine", "torch"]) == 2
    assert "needs a training checkpoint" in capsys.readouterr().err
