"""Evaluation in plant language: what a line would have done with this model on these images.

Beside the metrics (AUROC, AUPRO, F1: for model people), ``write_plant_report`` writes what a plant engineer asks:

* ``images.csv``: one row per test image: file, defect type, score, verdict at the bundle's threshold, right or not.
* confusion counts at the bundle's threshold: parts passed and rejected, per defect type defects caught and missed,
  good parts falsely rejected.
* a false-reject table: the threshold each target false-reject rate would set on this set's good images, and the
  defects each would miss (an answer to "what if we accept 1 % false rejects?"; set on the evaluated images
  themselves, so it says what is possible, not what a calibrated line will do).
* titled overlays (file, verdict, score, threshold) with a legend, for the worst cases: the missed or weakest
  defects, the falsely rejected or highest-scoring good parts.
* ``report.html``: one self-contained file (images inline) with all of the above and the score distributions.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge_inspector.bundle.thresholds import quantile_threshold
from edge_inspector.data.folders import Category

FRR_TARGETS = (0.001, 0.005, 0.01, 0.02, 0.05)
CSV_NAME, HTML_NAME = "images.csv", "report.html"
MIN_FIGURE_WIDTH = 1000
_GREEN, _RED, _BLUE = (0, 200, 0), (0, 0, 230), (230, 80, 0)  # BGR: found, predicted only, missed
LEGEND = (("defect found", _GREEN), ("flagged, not a defect", _RED), ("defect missed", _BLUE))


def per_image_rows(category: Category, scores: np.ndarray, image_threshold: float) -> list[dict[str, Any]]:
    """One dict per test image: what the line would have decided and whether that was right."""
    rows = []
    for sample, score in zip(category.test, scores):
        verdict = "FAIL" if score >= image_threshold else "PASS"
        rows.append({"file": str(sample.path.relative_to(category.root)), "defect": sample.defect,
                     "truth": "defect" if sample.is_anomalous else "good", "score": float(score),
                     "threshold": float(image_threshold), "verdict": verdict,
                     "correct": (verdict == "FAIL") == sample.is_anomalous})
    return rows


def confusion(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts at the threshold: per defect type caught / missed, good parts passed / falsely rejected."""
    by_type: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = by_type.setdefault(row["defect"], {"n": 0, "rejected": 0})
        counts["n"] += 1
        counts["rejected"] += row["verdict"] == "FAIL"
    good = by_type.pop("good", {"n": 0, "rejected": 0})
    defects = {kind: {"n": c["n"], "caught": c["rejected"], "missed": c["n"] - c["rejected"]}
               for kind, c in sorted(by_type.items())}
    return {
        "good": {"n": good["n"], "passed": good["n"] - good["rejected"], "false_rejects": good["rejected"]},
        "defects": defects,
        "missed_defects": sum(d["missed"] for d in defects.values()),
        "n_defective": sum(d["n"] for d in defects.values()),
        "accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else None,
    }


def false_reject_table(rows: list[dict[str, Any]], targets=FRR_TARGETS) -> list[dict[str, Any]]:
    """Per target false-reject rate: the threshold on this set's good scores and the defects it would miss."""
    good = np.array([r["score"] for r in rows if r["truth"] == "good"])
    if good.size == 0:
        return []
    table = []
    for target in targets:
        threshold = quantile_threshold(good, target)
        missed: dict[str, int] = {}
        for row in rows:
            if row["truth"] == "defect" and row["score"] < threshold:
                missed[row["defect"]] = missed.get(row["defect"], 0) + 1
        table.append({"target_false_reject_rate": target, "threshold": threshold,
                      "false_rejects": int((good >= threshold).sum()), "missed": missed,
                      "missed_total": sum(missed.values())})
    return table


def titled_overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, truth: np.ndarray, title: str,
                   pixel_threshold: float) -> np.ndarray:
    """Input | heat map | predicted vs true defect pixels, under a title line and over a colour legend (BGR)."""
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    scaled = np.clip(anomaly_map / (2 * pixel_threshold), 0, 1)  # mid-scale colour = the pixel threshold
    heat = cv2.addWeighted(bgr, 0.5, cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), 0.5, 0)
    predicted = anomaly_map >= pixel_threshold
    panel = cv2.cvtColor(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2BGR) // 2
    panel[predicted & truth], panel[predicted & ~truth], panel[~predicted & truth] = _GREEN, _RED, _BLUE
    row = np.concatenate([bgr, heat, panel], axis=1)
    if row.shape[1] < MIN_FIGURE_WIDTH:  # small model inputs: enlarge so the title and legend fit and read well
        factor = int(np.ceil(MIN_FIGURE_WIDTH / row.shape[1]))
        row = cv2.resize(row, (row.shape[1] * factor, row.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    width = row.shape[1]
    scale = width / 1400
    band = int(40 * scale)
    header = np.full((band, width, 3), 32, np.uint8)
    cv2.putText(header, title, (6, int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.9, (255, 255, 255), 1,
                cv2.LINE_AA)
    legend = np.full((band, width, 3), 32, np.uint8)
    x = 6
    for text, colour in (("heat map: red = at/above pixel threshold", (0, 0, 255)), *LEGEND):
        cv2.rectangle(legend, (x, band // 4), (x + band // 2, band * 3 // 4), colour, -1)
        cv2.putText(legend, text, (x + band // 2 + 4, int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7,
                    (230, 230, 230), 1, cv2.LINE_AA)
        x += band // 2 + 12 + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7, 1)[0][0]
    return np.concatenate([header, row, legend], axis=0)


def overlay_title(row: dict[str, Any]) -> str:
    mark = "right" if row["correct"] else ("MISSED DEFECT" if row["truth"] == "defect" else "FALSE REJECT")
    return (f"{row['file']}  {row['verdict']} ({mark})  score {row['score']:.4g} "
            f"{'>=' if row['verdict'] == 'FAIL' else '<'} threshold {row['threshold']:.4g}")


def worst_cases(rows: list[dict[str, Any]], count: int) -> list[int]:
    """Row indices of the defects scored lowest and the good parts scored highest, interleaved, wrong ones first."""
    defects = sorted((i for i, r in enumerate(rows) if r["truth"] == "defect"), key=lambda i: rows[i]["score"])
    goods = sorted((i for i, r in enumerate(rows) if r["truth"] == "good"), key=lambda i: -rows[i]["score"])
    interleaved = [i for pair in zip(defects, goods) for i in pair] + defects[len(goods):] + goods[len(defects):]
    return sorted(interleaved[: max(count * 2, 0)], key=lambda i: rows[i]["correct"])[:count]


def _png_data_uri(image_bgr: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", image_bgr)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else ""


def _histogram_svg(rows: list[dict[str, Any]], threshold: float, bins: int = 40) -> str:
    """Good and defective score distributions (log scale when the scores span decades) with the threshold."""
    scores = np.array([r["score"] for r in rows], np.float64)
    positive = scores[scores > 0]
    log = positive.size == scores.size and positive.size > 0 and positive.max() / positive.min() > 20
    value = np.log10 if log else (lambda x: x)
    edges = np.linspace(value(scores.min()), value(max(scores.max(), threshold)) + 1e-9, bins + 1)
    width, height = 640, 180
    bars, peak = [], 1
    counts = {}
    for truth in ("good", "defect"):
        picked = np.array([r["score"] for r in rows if r["truth"] == truth], np.float64)
        counts[truth] = np.histogram(value(picked), edges)[0] if picked.size else np.zeros(bins, int)
        peak = max(peak, int(counts[truth].max()))
    step = width / bins
    for truth, colour in (("good", "#2e9e44"), ("defect", "#d63a3a")):
        for i, n in enumerate(counts[truth]):
            h = n / peak * (height - 20)
            bars.append(f'<rect x="{i * step:.1f}" y="{height - h:.1f}" width="{step - 1:.1f}" height="{h:.1f}" '
                        f'fill="{colour}" fill-opacity="0.6"/>')
    x = (value(threshold) - edges[0]) / (edges[-1] - edges[0]) * width
    axis = "log10(score)" if log else "score"
    return (f'<svg width="{width}" height="{height + 20}" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}'
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#000" stroke-dasharray="4"/>'
            f'<text x="{x + 4:.1f}" y="12" font-size="11">threshold {threshold:.4g}</text>'
            f'<text x="0" y="{height + 15}" font-size="11">{axis} {edges[0]:.3g}</text>'
            f'<text x="{width - 90}" y="{height + 15}" font-size="11">{edges[-1]:.3g}</text></svg>')


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(result: dict[str, Any], plant: dict[str, Any], rows: list[dict[str, Any]], figures: list[tuple[str, str]],
          metrics_table: str) -> str:
    c = plant["confusion"]
    model = result.get("model", {})
    summary = [["good parts", c["good"]["n"], f"{c['good']['passed']} passed", f"{c['good']['false_rejects']} "
                "falsely rejected"]]
    summary += [[f"defect: {kind}", d["n"], f"{d['caught']} caught", f"{d['missed']} missed"]
                for kind, d in c["defects"].items()]
    frr = [[f"{100 * t['target_false_reject_rate']:g} %", f"{t['threshold']:.4g}", t["false_rejects"],
            t["missed_total"], ", ".join(f"{k} {v}" for k, v in sorted(t["missed"].items())) or "-"]
           for t in plant["false_reject_table"]]
    images = "".join(f'<figure><img src="{uri}"><figcaption>{html.escape(title)}</figcaption></figure>'
                     for title, uri in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edge-inspector eval</title><style>
body{{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#eee}} td:first-child{{text-align:left}}
figure{{margin:12px 0}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
<h1>Evaluation: {html.escape(str(model.get('model_id', model.get('path', ''))))} on
{html.escape(result['dataset']['name'])}</h1>
<p>{len(rows)} test images; verdicts at the model's image threshold {plant['image_threshold']:.4g}
(score &ge; threshold = FAIL). Accuracy {100 * (c['accuracy'] or 0):.1f} %: {c['missed_defects']} of
{c['n_defective']} defective parts missed, {c['good']['false_rejects']} of {c['good']['n']} good parts rejected.
Per image: <code>{CSV_NAME}</code>. Command: <code>{html.escape(result.get('command', ''))}</code></p>
{f'<p class="warning"><b>Threshold warning:</b> {html.escape(result["threshold_warning"])}</p>'
 if result.get("threshold_warning") else ""}
<h2>At the model's threshold</h2>{_table(['parts', 'n', 'right', 'wrong'], summary)}
<h2>Other false-reject targets</h2><p>The threshold each target would set on these good images, and what it would
miss (set on the evaluated images themselves: what is possible, not what a calibrated line does).</p>
{_table(['target false rejects', 'threshold', 'false rejects', 'missed defects', 'missed by type'], frr)}
<h2>Score distributions</h2><p>green: good parts, red: defective parts, dashed: the threshold.</p>
{_histogram_svg(rows, plant['image_threshold'])}
<h2>Worst cases</h2><p>The lowest-scoring defects and the highest-scoring good parts, wrong verdicts first. Panels:
the image, the anomaly heat map (mid-scale = the pixel threshold), and found / flagged / missed defect pixels.</p>
{images}<h2>Metrics</h2><pre>{html.escape(metrics_table)}</pre></body></html>"""


def write_plant_report(out_dir: Path, category: Category, images: np.ndarray, maps: np.ndarray, masks: np.ndarray,
                       scores: np.ndarray, image_threshold: float, pixel_threshold: float, result: dict[str, Any],
                       metrics_table: str, worst: int = 8, progress: bool = True) -> dict[str, Any]:
    """Write images.csv, the worst-case overlays and report.html; returns the plant figures (for result.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = per_image_rows(category, scores, image_threshold)
    with open(out_dir / CSV_NAME, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plant = {"image_threshold": float(image_threshold), "confusion": confusion(rows),
             "false_reject_table": false_reject_table(rows)}
    figures = []
    for i in tqdm(worst_cases(rows, worst), desc="worst-case overlays", disable=not progress, leave=False):
        title = overlay_title(rows[i])
        figures.append((title, _png_data_uri(titled_overlay(images[i], maps[i], masks[i], title, pixel_threshold))))
    (out_dir / HTML_NAME).write_text(_html(result, plant, rows, figures, metrics_table))
    return plant


def plant_summary(result: dict[str, Any]) -> str:
    """Two lines for the console: the verdict counts at the threshold and where the report is."""
    plant = result.get("plant")
    if not plant:
        return ""
    c = plant["confusion"]
    missed = ", ".join(f"{k} {d['missed']}/{d['n']}" for k, d in c["defects"].items())
    return (f"at threshold {plant['image_threshold']:.4g}: {c['good']['false_rejects']} of {c['good']['n']} good "
            f"parts rejected, {c['missed_defects']} of {c['n_defective']} defects missed ({missed}); "
            f"per image: {CSV_NAME}, report: {HTML_NAME}")
