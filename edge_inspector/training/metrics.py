"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO (FPR <= 0.3, normalised) and F1, per defect type.

AUROC comes from scikit-learn. AUPRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): for each threshold,
PRO = mean over connected ground-truth regions of the fraction of the region above the threshold, plotted against the
false-positive rate on all normal pixels; the area up to FPR 0.3 is divided by 0.3 so a perfect model scores 1.
It is computed exactly from one sort of all pixels: each defect pixel weighs 1 / (its region's area x number of
regions), so the running sum over pixels in descending score order is the PRO curve.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from edge_inspector.bundle.thresholds import f1_at, f1_threshold

GOOD = "good"


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of image scores (labels truthy = defective). Never flipped: below 0.5 means worse than chance."""
    return float(roc_auc_score(np.asarray(labels).astype(bool), np.asarray(scores, np.float64)))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC over all pixels of (N, H, W) anomaly maps against (N, H, W) bool masks."""
    return float(roc_auc_score(np.asarray(masks).astype(bool).ravel(), np.asarray(maps, np.float32).ravel()))


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``.

    Args:
        maps: (N, H, W) anomaly maps (higher = more anomalous).
        masks: (N, H, W) bool ground truth; 8-connected components are the regions.
        max_fpr: integration limit on the false-positive rate.

    Raises:
        ValueError: no defect region or no normal pixel.
    """
    maps = np.asarray(maps, np.float32)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    weights = np.zeros(masks.shape, np.float64)
    n_regions = 0
    structure = np.ones((3, 3), bool)
    for i in range(len(masks)):
        if not masks[i].any():
            continue
        labelled, count = ndimage.label(masks[i], structure=structure)
        areas = np.bincount(labelled.ravel())
        region_weight = np.zeros_like(areas, np.float64)
        region_weight[1:] = 1.0 / areas[1:]
        weights[i] = region_weight[labelled]
        n_regions += count
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AUPRO needs at least one defect region and one normal pixel")
    scores = maps.ravel()
    order = np.argsort(-scores)  # ties are grouped below, so an unstable (faster) sort is exact
    sorted_scores = scores[order]
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    fpr = np.cumsum(~masks.ravel()[order]) / n_normal
    # A threshold can only fall between distinct scores: keep the last index of each run of ties.
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    # Cut the curve at max_fpr, interpolating the PRO value there.
    end = int(np.searchsorted(fpr, max_fpr, side="right"))
    if end < len(fpr):
        pro_at = np.interp(max_fpr, fpr[end - 1 : end + 1], pro[end - 1 : end + 1])
        fpr = np.r_[fpr[:end], max_fpr]
        pro = np.r_[pro[:end], pro_at]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def _one_group(
    image_scores: dict[str, np.ndarray],
    labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    threshold: float | None,
    pixel_threshold: float | None,
    max_fpr: float,
) -> dict[str, float]:
    out: dict[str, float] = {"n_images": float(len(labels)), "n_defective": float(labels.sum())}
    for name, scores in image_scores.items():
        out[f"image_auroc_{name}"] = image_auroc(scores, labels)
    primary = next(iter(image_scores.values()))
    out["image_auroc"] = out[f"image_auroc_{next(iter(image_scores))}"]
    if threshold is not None:
        at = f1_at(primary, labels, threshold)
        out.update({"image_f1": at["f1"], "image_precision": at["precision"], "image_recall": at["recall"]})
    out["image_f1_best"] = f1_threshold(primary, labels)[1]
    if maps is not None and masks is not None:
        out["pixel_auroc"] = pixel_auroc(maps, masks)
        out["aupro"] = aupro(maps, masks, max_fpr)
        if pixel_threshold is not None:
            out["pixel_f1"] = f1_at(maps, masks, pixel_threshold)["f1"]
    return out


def evaluate_scores(
    image_scores: dict[str, np.ndarray],
    defects: list[str],
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
    max_fpr: float = 0.3,
) -> dict[str, dict[str, float]]:
    """All metrics overall and per defect type (each type against all good images; a type's ``n_images`` counts
    that type's images only, ``n_good`` the good images it is compared with).

    Args:
        image_scores: aggregation name -> (N,) image scores; the first entry is the primary one (F1, 'image_auroc').
        defects: (N,) defect type per image, 'good' for normal ones.
        maps: optional (N, H, W) anomaly maps; masks: their (N, H, W) bool ground truth.
        threshold: the calibrated image threshold (F1, precision, recall at it are reported when given).
        pixel_threshold: the calibrated map threshold (pixel F1 at it is reported when given).

    Returns:
        {'overall': {...}, '<defect type>': {...}, ...}.
    """
    defects_arr = np.asarray(defects)
    labels = defects_arr != GOOD
    results = {"overall": _one_group(image_scores, labels, maps, masks, threshold, pixel_threshold, max_fpr)}
    for defect in sorted(set(defects_arr[labels].tolist())):
        keep = (defects_arr == GOOD) | (defects_arr == defect)
        results[defect] = _one_group(
            {k: v[keep] for k, v in image_scores.items()},
            labels[keep],
            None if maps is None else maps[keep],
            None if masks is None else masks[keep],
            threshold,
            pixel_threshold,
            max_fpr,
        )
        # The row is about this type: its own images (AUROC still compares them with every good image).
        results[defect]["n_images"] = float((defects_arr == defect).sum())
        results[defect]["n_good"] = float((defects_arr == GOOD).sum())
    return results


MEAN_OVER_TYPES_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")


def mean_over_types(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The unweighted mean of each per-type figure over the defect types of ``evaluate_scores``'s result.

    Pooled figures weigh types by their count (pixel figures by their area: on magnetic_tile ``uneven`` holds 72 %
    of the defect pixels); the mean over types weighs each type once.
    """
    types = [group for group in results if group != "overall"]
    return {key: float(np.mean([results[t][key] for t in types])) for key in MEAN_OVER_TYPES_KEYS
            if types and all(key in results[t] for t in types)}
