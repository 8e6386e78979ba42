"""Metrics against hand-computed cases: image / pixel AUROC, AUPRO (FPR <= 0.3), F1, per defect type."""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.training.metrics import aupro, evaluate_scores, image_auroc, mean_over_types, pixel_auroc


def test_image_auroc_hand_computed_and_never_flipped():
    # Pairs (pos, neg): (0.35,0.1) ok, (0.35,0.4) wrong, (0.8,0.1) ok, (0.8,0.4) ok -> 3/4
    assert image_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # A model that ranks defects lower stays below 0.5: flipping it would hide a broken model.
    assert image_auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([0, 0, 1, 1])) == 0.0


def test_pixel_auroc_hand_computed():
    maps = np.array([[[0.9, 0.2], [0.6, 0.1]]])
    masks = np.array([[[True, False], [False, True]]])
    # positives 0.9, 0.1 ; negatives 0.2, 0.6 -> pairs won: 0.9>0.2, 0.9>0.6 -> 2 of 4
    assert pixel_auroc(maps, masks) == pytest.approx(0.5)


def _two_region_case():
    # Region A = pixels (0,0),(0,1) scoring 0.9 and 0.5; region B = pixel (1,3) scoring 0.8; 5 normal pixels.
    maps = np.array([[[0.9, 0.5, 0.7, 0.3], [0.2, 0.1, 0.05, 0.8]]], np.float32)
    masks = np.zeros_like(maps, bool)
    masks[0, 0, :2] = True
    masks[0, 1, 3] = True
    return maps, masks


def test_aupro_hand_computed():
    maps, masks = _two_region_case()
    # Curve (FPR, PRO): (0,.25) (0,.75) (.2,.75) (.2,1) (.4,1)...  area to 0.3 = .2*.75 + .1*1 = .25 -> /.3
    assert aupro(maps, masks) == pytest.approx(0.25 / 0.3)
    # With max_fpr 0.2 the area is .2*.75 = .15 -> .75
    assert aupro(maps, masks, max_fpr=0.2) == pytest.approx(0.75)


def test_aupro_weighs_regions_not_pixels():
    # A big region found and a small region missed: PRO counts each region once, pixel recall would not.
    maps = np.zeros((2, 8, 8), np.float32)
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True  # 16-pixel region, scored high
    maps[0, :4, :4] = 1.0
    masks[1, 6, 6] = True  # 1-pixel region, scored like the background
    # (0, .5) then one tie group jumps to (1, 1): interpolated PRO at .3 is .65 -> area .3*(.5+.65)/2 -> /.3
    assert aupro(maps, masks) == pytest.approx(0.575)
    maps[1, 6, 6] = 1.0
    assert aupro(maps, masks) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        aupro(maps, np.zeros_like(masks))


def test_evaluate_scores_overall_and_per_type():
    defects = ["good", "good", "good", "crack", "crack", "hole"]
    scores = {"mean": np.array([0.1, 0.2, 0.3, 0.25, 0.9, 0.8]), "max": np.array([1, 2, 3, 4, 5, 6.0])}
    maps = np.zeros((6, 4, 4), np.float32)
    masks = np.zeros((6, 4, 4), bool)
    for i in range(3, 6):
        masks[i, 1:3, 1:3] = True
        maps[i, 1:3, 1:3] = 1.0
    result = evaluate_scores(scores, defects, maps, masks, threshold=0.5, pixel_threshold=0.5)
    overall = result["overall"]
    assert set(result) == {"overall", "crack", "hole"}
    # mean: positives .25,.9,.8 vs negatives .1,.2,.3 -> .25 loses to .3 only -> 8/9
    assert overall["image_auroc"] == overall["image_auroc_mean"] == pytest.approx(8 / 9)
    assert overall["image_auroc_max"] == 1.0
    # at 0.5: tp=2 (0.9, 0.8), fp=0, fn=1 -> precision 1, recall 2/3, F1 0.8
    assert overall["image_f1"] == pytest.approx(0.8) and overall["image_recall"] == pytest.approx(2 / 3)
    assert overall["image_f1_best"] == pytest.approx(6 / 7)  # cut at .25: tp 3, fp 1 (.3)
    assert overall["pixel_auroc"] == 1.0 and overall["aupro"] == pytest.approx(1.0) and overall["pixel_f1"] == 1.0
    assert result["crack"]["image_auroc"] == pytest.approx(5 / 6)  # .25 vs (.1,.2,.3) 2/3; .9 -> 3/3
    assert result["hole"]["image_auroc"] == 1.0
    # a type's row counts its own images (issue 16: 'n' counted every good image too)
    assert (result["crack"]["n_images"], result["hole"]["n_images"], result["hole"]["n_good"]) == (2, 1, 3)
    # each type once: (5/6 + 1) / 2 for the image AUROC, whatever the types' counts
    means = mean_over_types(result)
    assert means["image_auroc"] == pytest.approx((5 / 6 + 1) / 2) and means["pixel_f1"] == 1.0
