"""Evaluation output a person reads: a JSON result, a plain-text table and a few overlay images.

Each overlay PNG is one row of three panels under a title (file, verdict, score, threshold) and over a legend: the
model input, the anomaly heatmap over it (colour 0.5 of the scale = the pixel threshold), and predicted vs true defect
pixels (green = both, red = predicted only, blue = missed). ``eval_report`` adds the plant-language outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_inspector.data.folders import Category
from edge_inspector.engines.records import format_table
from edge_inspector.training.eval_report import overlay_title, per_image_rows, titled_overlay

RESULT_NAME, TABLE_NAME, OVERLAY_DIR = "result.json", "table.txt", "overlays"
_COLUMNS = (
    ("n", "n_images", "{:.0f}"),
    ("img AUROC", "image_auroc", "{:.3f}"),
    ("mean", "image_auroc_mean", "{:.3f}"),
    ("max", "image_auroc_max", "{:.3f}"),
    ("topk", "image_auroc_topk", "{:.3f}"),
    ("pix AUROC", "pixel_auroc", "{:.3f}"),
    ("AUPRO", "aupro", "{:.3f}"),
    ("F1@thr", "image_f1", "{:.3f}"),
    ("F1 best", "image_f1_best", "{:.3f}"),
    ("pix F1", "pixel_f1", "{:.3f}"),
)


def result_table(result: dict[str, Any]) -> str:
    """The metrics as an aligned text table: one row per group (overall first, then each defect type)."""
    metrics = result["metrics"]
    header = ["group", *(name for name, _, _ in _COLUMNS)]
    groups = {group: metrics[group] for group in ["overall", *sorted(k for k in metrics if k != "overall")]}
    if result.get("mean_over_types"):
        groups["mean over types"] = result["mean_over_types"]
    rows = [[group, *(fmt.format(values[key]) if key in values else "-" for _, key, fmt in _COLUMNS)]
            for group, values in groups.items()]
    table = format_table(header, rows, right_from=1, rule=True)
    model = result.get("model", {})
    title = (f"{result['dataset']['name']}: {model.get('model_id', model.get('path', '?'))} via {result['engine']}, "
             f"score = {result['aggregation']} (columns mean/max/topk: image AUROC per aggregation)")
    latency = result.get("latency_ms") or {}
    tail = []
    if latency:
        tail.append(f"latency per image: mean {latency['mean']:.1f} ms, p50 {latency['p50']:.1f} ms, "
                    f"p99 {latency['p99']:.1f} ms")
    return "\n".join([title, table, *tail])


def pick_overlays(category: Category, scores: np.ndarray, count: int) -> list[int]:
    """Indices worth looking at: per defect type its highest- and lowest-scored image, then the top good one."""
    defects = np.array([s.defect for s in category.test])
    picked: list[int] = []
    for defect in category.defect_types:
        idx = np.flatnonzero(defects == defect)
        order = idx[np.argsort(scores[idx])]
        picked += [int(order[-1]), int(order[0])]
    good = np.flatnonzero(defects == "good")
    if len(good):
        picked.append(int(good[np.argmax(scores[good])]))
    return list(dict.fromkeys(picked))[:count]


def write_overlays(
    out_dir: Path,
    category: Category,
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    pixel_threshold: float,
    count: int = 8,
    image_threshold: float | None = None,
) -> list[Path]:
    """Write a few titled three-panel overlay PNGs (``eval_report.titled_overlay``); returns their paths.

    The title names the file, the verdict at ``image_threshold`` (when given), the score and the threshold.
    """
    folder = out_dir / OVERLAY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = None if image_threshold is None else per_image_rows(category, scores, image_threshold)
    for i in pick_overlays(category, scores, count):
        sample = category.test[i]
        name = str(sample.path.relative_to(category.root))
        title = f"{name}  score {scores[i]:.4g}" if rows is None else overlay_title(rows[i])
        path = folder / f"{sample.defect}_{sample.path.stem}_score{scores[i]:.4g}.png"
        cv2.imwrite(str(path), titled_overlay(images[i], maps[i], masks[i], title, pixel_threshold))
        written.append(path)
    return written


def write_result(out_dir: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write result.json and table.txt into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, table_path = out_dir / RESULT_NAME, out_dir / TABLE_NAME
    json_path.write_text(json.dumps(result, indent=2, default=str))
    table_path.write_text(result_table(result) + "\n")
    return json_path, table_path
