"""The HQS bit plan on disk: ``<name>.yaml`` (machine-readable, every signal per unit) and ``<name>.md`` (a table).

Both live in a ``calibration/`` folder (the bundle's, and optionally the repository's). The YAML is what the
manifest's ``quantization.table`` points at; the markdown is for people reviewing a plan.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from edge_inspector.quantization.fakequant import PRECISION_WEIGHT_BITS
from edge_inspector.quantization.sensitivity import UnitSignals
from edge_inspector.quantization.units import QuantUnit


def unit_bytes(unit: QuantUnit, precision: str) -> float:
    """Stored weight bytes of a unit at ``precision`` (codes only; scales and biases are reported separately)."""
    return unit.params * PRECISION_WEIGHT_BITS[precision] / 8


def plan_rows(units: list[QuantUnit], signals: list[UnitSignals], plan: dict[str, str]) -> list[dict[str, Any]]:
    """One row per unit: what was measured, what was chosen, and what it costs."""
    by_name = {s.name: s for s in signals}
    rows = []
    for unit in units:
        s = by_name.get(unit.name)
        precision = plan.get(unit.name, "keep")
        rows.append({
            "unit": unit.name,
            "kind": unit.kind,
            "convs": unit.convs,
            "params": unit.params,
            "pinned": unit.pin_reason or None,
            "precision": precision,
            "weight_bits": PRECISION_WEIGHT_BITS[precision],
            "weight_bytes": unit_bytes(unit, precision),
            "signals": s.to_dict() if s else None,
        })
    return rows


def _clean(value: Any) -> Any:
    """YAML-safe: floats rounded to 6 significant digits, NaN -> None, tuples -> lists."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A readable per-layer table (signals at 4 bits, score, chosen bits, bytes) and the whole-model summary."""
    lines = ["# HQS bit plan", ""]
    for key, value in summary.items():
        if key not in ("attention_by_depth", "adaround"):
            lines.append(f"- **{key}**: {_fmt(value) if isinstance(value, float) else value}")
    lines += [
        "",
        "Signals are measured with only that unit at 4 bits (W4A8), everything else FP32, on held-back good images "
        "and synthetic defects. drift: mean |map change| / normal map std. sep. loss: drop of (inside - outside) / "
        "std outside. AUROC columns: points of change. HAWQ: Tr(H)/n * ||Q(W) - W||^2. entropy: change of attention "
        "row entropy (nats); KL: mean KL(FP32 || quantized) of its attention rows (nats), integer QK^T and AV. "
        "Score: weighted sum of the signals, each scaled by its largest value.",
        "",
        "| # | unit | kind | params | drift | sep. loss | img AUROC | px AUROC | HAWQ | entropy | KL | score 4b "
        "| score 8b | bits | KiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        s = row["signals"] or {}

        def at4(key: str) -> float | None:
            return (s.get(key) or {}).get("w4a8")

        lines.append(
            f"| {i} | `{row['unit']}` | {row['kind']} | {row['params']} | {_fmt(at4('drift'))} "
            f"| {_fmt(at4('separation_loss'))} | {_fmt(at4('image_auroc_change'), '+.2f')} "
            f"| {_fmt(at4('pixel_auroc_change'), '+.2f')} | {_fmt(at4('hessian'))} "
            f"| {_fmt(at4('attention_entropy_change'), '+.3f')} | {_fmt(at4('attention_kl'))} "
            f"| {_fmt((s.get('score') or {}).get('w4a8'))} "
            f"| {_fmt((s.get('score') or {}).get('w8a8'))} | {row['weight_bits']} | {row['weight_bytes'] / 1024:.1f} "
            f"| {row['pinned'] or ''} |"
        )
    lines += _attention_section(summary.get("attention_by_depth") or [])
    return "\n".join(lines) + "\n"


def _attention_section(rows: list[dict[str, Any]]) -> list[str]:
    """RAAD's hierarchy by depth (``quantization.raad``) under the shipped plan."""
    if not rows:
        return []
    lines = ["", "## Attention by depth (RAAD's hierarchy, shipped plan)", "",
             "Per attention block in forward order: mean row entropy of the FP32 attention (nats; max = uniform "
             "over the keys) and mean KL(FP32 || shipped plan) of the rows (nats), over every query cell of the "
             "probe's normal images and over the query cells inside synthetic defects.", "",
             "| depth | block | entropy normal | entropy defect | max | KL normal | KL defect |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['depth']} | `{r['block']}` | {_fmt(r['entropy_normal'], '.3f')} "
                     f"| {_fmt(r['entropy_defect'], '.3f')} | {_fmt(r['max_entropy'], '.3f')} "
                     f"| {_fmt(r['kl_normal'], '.2e')} | {_fmt(r['kl_defect'], '.2e')} |")
    return lines


def write_plan(folder: str | Path, name: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<folder>/<name>.yaml`` and ``<folder>/<name>.md``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"summary": _clean(summary), "bit_plan": {r["unit"]: r["precision"] for r in rows}, "units": _clean(rows)}
    yaml_path, md_path = folder / f"{name}.yaml", folder / f"{name}.md"
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    md_path.write_text(markdown_table(rows, summary))
    return yaml_path, md_path


SUMMARY_KEYS = ("average_weight_bits", "precisions", "graph_bytes_fp32", "graph_bytes_hqs", "size_ratio",
                "probe_image_auroc_fp32", "probe_image_auroc_hqs", "probe_pixel_auroc_fp32", "probe_pixel_auroc_hqs",
                "latency_p50_ms_fp32", "latency_p50_ms_hqs", "speed_ratio", "parity", "target",
                "repair_within_tolerance", "final_probe_drop", "final_drop_intervals", "final_within_tolerance",
                "weight_codes", "weight_codes_reason", "candidates", "allocation", "rounding_4bit")
"""The summary figures the plain-text report shows, in this order."""


def _clip_left(text: str, width: int) -> str:
    """``text`` in ``width`` characters, its start replaced by '…' when too long (unit names differ at the end)."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def plan_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The per-layer table (score, bits, size) and the whole-model summary, as plain text for a terminal."""
    lines = [f"{'#':>3} {'unit':<44} {'kind':<9} {'params':>8} {'score4':>7} {'score8':>7} {'bits':>4} {'KiB':>7}"]
    for i, row in enumerate(rows):
        score = (row["signals"] or {}).get("score", {})
        pin = f"  [{row['pinned']}]" if row["pinned"] else ""
        lines.append(f"{i:>3} {_clip_left(row['unit'], 44):<44} {row['kind']:<9} {row['params']:>8} "
                     f"{score.get('w4a8', 0):>7.3f} {score.get('w8a8', 0):>7.3f} {row['weight_bits']:>4} "
                     f"{row['weight_bytes'] / 1024:>7.1f}{pin}")
    lines.append("")
    lines += [f"{key:<26} {summary[key]}" for key in SUMMARY_KEYS if key in summary]
    return "\n".join(lines)
