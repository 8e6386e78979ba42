"""Calibrate: HQS per-layer INT8/INT4 calibration + QAT of a trained HaloAE into a QDQ bundle and plan files.

``model`` is a training checkpoint (``.pt``) or a bundle written by ``train`` (its checkpoint is the
``<bundle>.work/checkpoints/last.pt`` that ``train`` keeps beside it; a bundle holds only ONNX, which cannot be
fine-tuned). The QDQ bundle's thresholds are set on the quantized model's own held-back scores with the FP32
bundle's threshold policy (its manifest's target rates) when there is an FP32 bundle, else with the given or the
default policy. Data use: activation ranges and QAT come from the fit split of ``<data>/train/good``; the probe set,
normal statistics and thresholds from the held-back split (the same seeded split training used). Test images are
never touched.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_inspector.bundle.graph_size import initializer_bytes
from edge_inspector.bundle.store import Bundle, read_manifest
from edge_inspector.bundle.thresholds import ThresholdPolicy, manifest_threshold_warning
from edge_inspector.config import EngineSettings
from edge_inspector.data.folders import holdout_split, load_images, scan_category
from edge_inspector.data.synthetic import probe_from_goods
from edge_inspector.engines.latency import time_graphs
from edge_inspector.engines.memory import runtime_weight_bytes
from edge_inspector.errors import AccuracyCheckError, BundleError
from edge_inspector.export.parity import graph_parity
from edge_inspector.export.onnx_export import export_bundle
from edge_inspector.export.initializers import dedupe_initializers, narrow_index_initializers
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.quantization.calibrate import CalibrateOptions, run_hqs, summary_of
from edge_inspector.quantization.qdq_bundle import export_qdq_bundle
from edge_inspector.quantization.report import plan_table, write_plan
from edge_inspector.quantization.units import set_mode
from edge_inspector.training.heads import build_scorer
from edge_inspector.training.progress import phase
from edge_inspector.training.trainer import load_checkpoint
from edge_inspector.workflows.train import default_work_dir


@dataclass(frozen=True)
class CalibrateResult:
    """What ``calibrate`` produced."""

    bundle: Bundle
    """The QDQ bundle."""
    model: str
    """The checkpoint calibrated and the data it was calibrated on."""
    figures: dict[str, Any]
    """Whole-model figures: bits, sizes, probe AUROC before and after, latency and speed ratio, parity."""
    rows: list[dict[str, Any]]
    """One row per quantization unit: signals, chosen precision, bytes."""
    plan_files: list[Path]
    """The plan YAML and markdown files written (in the bundle's calibration/ and ``plan_dir``)."""
    threshold_source: str
    """Where the threshold policy came from, in words."""

    def summary(self) -> str:
        """The per-layer table, the whole-model figures and what was written, for a person."""
        m = self.bundle.manifest
        warning = manifest_threshold_warning(m.thresholds, m.score.image)
        return "\n".join([
            f"model       {self.model}",
            plan_table(self.rows, self.figures),
            f"thresholds  image {m.thresholds.image:.4g}, pixel {m.thresholds.pixel:.4g}: {self.threshold_source}",
            *([f"warning     {warning}"] if warning else []),
            f"bundle      {self.bundle.path} ({m.model_id}); plan {', '.join(str(p) for p in self.plan_files)}",
        ])


def resolve_model(model: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint, FP32 bundle folder or None) behind ``model``: a checkpoint file itself, or a bundle folder and the
    checkpoint ``train`` keeps beside it.

    Raises:
        BundleError: no such file or folder, or a bundle folder without its checkpoint.
    """
    path = Path(model)
    if path.is_file():
        return path, None
    if path.is_dir():
        candidate = default_work_dir(path) / "checkpoints" / "last.pt"
        if candidate.is_file():
            return candidate, path
        raise BundleError(
            f"{path} is a bundle folder without a training checkpoint beside it ({candidate} is missing); "
            "calibration fine-tunes the torch model, so pass the .pt checkpoint with --model"
        )
    raise BundleError(f"--model {path}: no such checkpoint file or bundle folder")


def threshold_policy(fp32_bundle: Path | None, given: ThresholdPolicy | None) -> tuple[ThresholdPolicy, str]:
    """The policy the QDQ bundle's thresholds are set with, and where it came from.

    ``given`` wins; else the FP32 bundle's manifest (the rates its quantile thresholds were set for); else the
    default. F1 or hand-set thresholds cannot carry over (the quantized model's scores differ, and F1 needs labels):
    the default policy is used and the source says so.
    """
    if given is not None:
        return given, f"target rates given: false-reject {given.image_false_reject_rate}, " \
                      f"pixel false-positive {given.pixel_false_positive_rate}"
    if fp32_bundle is None:
        default = ThresholdPolicy()
        return default, (f"default target rates (no FP32 bundle given): false-reject "
                         f"{default.image_false_reject_rate}, pixel false-positive {default.pixel_false_positive_rate}")
    thresholds = read_manifest(fp32_bundle).thresholds
    policy = ThresholdPolicy.of(thresholds)
    if policy is None:
        default = ThresholdPolicy()
        return default, (f"the FP32 bundle's thresholds are {thresholds.image_method} / {thresholds.pixel_method}, "
                         f"which do not carry over to the quantized model: default target rates (false-reject "
                         f"{default.image_false_reject_rate}); run 'edge-inspector eval --write-thresholds' on a "
                         "labelled set for F1 thresholds")
    return policy, (f"the FP32 bundle's target rates: false-reject {policy.image_false_reject_rate}, "
                    f"pixel false-positive {policy.pixel_false_positive_rate}")


def calibrate(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    options: CalibrateOptions = CalibrateOptions(),
    *,
    thresholds: ThresholdPolicy | None = None,
    plan_dir: str | Path | None = None,
) -> CalibrateResult:
    """HQS-quantize the trained model behind ``model`` into the QDQ bundle ``out``.

    Args:
        model: training checkpoint (``.pt``) or a bundle folder written by ``train``.
        data: the MVTec-layout category folder the model was trained on.
        out: QDQ bundle folder to write.
        options: HQS settings (budget, tolerance, QAT, target engine, threads; ``threads`` also sets torch's).
        thresholds: target rates for the QDQ bundle's thresholds (default: the FP32 bundle's, see
            ``threshold_policy``).
        plan_dir: also write the plan YAML + markdown here (e.g. the repository's ``calibration/``).

    Raises:
        BundleError: no model at ``model``, or a bundle without its checkpoint.
        DataError: the data folder or its holdout split is unusable.
        AccuracyCheckError: the shipped model's probe drop exceeds ``options.tolerance`` (unless
            ``options.accept_drop``); raised after the bundle and plan files are written, its ``result`` is the
            ``CalibrateResult``.
    """
    checkpoint, fp32_bundle = resolve_model(model)
    policy, source = threshold_policy(fp32_bundle, thresholds)
    torch.set_num_threads(options.threads)
    net, preset = load_checkpoint(checkpoint)
    category = scan_category(data)
    spec = preset.model
    fit_paths, holdout_paths = holdout_split(category, preset.train)
    fit_images = load_images(fit_paths, spec.width, spec.height, spec.resize, progress=options.progress, desc="fit")
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=options.progress,
                          desc="holdout")
    # the head the FP32 bundle would ship, with its FP32 normal statistics: the signals' reference
    scorer, _, choice = build_scorer(net, preset, holdout, progress=options.progress)
    probe = probe_from_goods(holdout[: options.probe_normals], options.defects_per_good, options.seed)
    result = run_hqs(scorer, preset, fit_images, probe, options)

    stats = fit_normal_statistics(scorer, holdout, progress=options.progress)  # the quantized model's normal map
    chosen = stats.thresholds(policy)
    name = f"{category.name}-{Path(preset.name).stem}-hqs"
    with tempfile.TemporaryDirectory(prefix="ei-calibrate-") as tmp, phase("export (FP32 and QDQ graphs)",
                                                                          options.progress):
        set_mode(scorer, "float")
        fp32 = export_bundle(scorer, Path(tmp) / "fp32", name, spec.resize, stats, chosen, None, holdout,
                             head_probe=choice.probe)
        fp32_graph = onnx.load(str(fp32.onnx_path))
        dedupe_initializers(fp32_graph)  # the same lossless clean-ups the QDQ graph gets, for a fair size ratio
        narrow_index_initializers(fp32_graph)
        bundle, graph = export_qdq_bundle(scorer, fp32, Path(out), result, options, name, stats, chosen, holdout)
    summary = summary_of(result, options)
    with phase("parity and latency of the QDQ graph", options.progress):
        summary.update(_measured(scorer, fp32_graph, graph, holdout, options))
    summary.update({"target": options.target, "bundle": str(bundle.path)})
    folders = [Path(out) / "calibration"] + ([Path(plan_dir)] if plan_dir else [])
    paths = [path for folder in folders for path in write_plan(folder, name, result.rows, summary)]
    used = (f"{checkpoint} ({preset.name}); data {category.root}: {len(fit_paths)} fit, "
            f"{len(holdout_paths)} held back")
    outcome = CalibrateResult(bundle, used, summary, result.rows, paths, source)
    if not summary["final_within_tolerance"] and not options.accept_drop:
        raise AccuracyCheckError(
            f"the quantized model fails the final check: probe AUROC drop {result.final_drop:.2f} points > "
            f"tolerance {options.tolerance} ({', '.join(f'{k} {v.text()}' for k, v in result.final_intervals.items())}"
            f"; 95% intervals). The bundle and plan were written for inspection ({bundle.path}); raise --tolerance, "
            "--budget-bits, or pass --accept-drop to ship it anyway", outcome)
    return outcome


def _measured(scorer: torch.nn.Module, fp32_graph: onnx.ModelProto, graph: onnx.ModelProto, holdout: np.ndarray,
              options: CalibrateOptions) -> dict[str, Any]:
    """Size, ONNX Runtime latency and parity of the QDQ graph against the FP32 one, for the summary."""
    check = graph_parity(scorer, graph, holdout[:4], options.threads)
    settings = EngineSettings(intra_op_threads=options.threads)
    latency = time_graphs({"fp32": fp32_graph, "hqs": graph}, holdout[0], options.latency_runs, settings)
    runtime = {name: runtime_weight_bytes(g, settings) for name, g in (("fp32", fp32_graph), ("hqs", graph))}
    return {
        "graph_bytes_fp32": initializer_bytes(fp32_graph),
        "graph_bytes_hqs": initializer_bytes(graph),
        "size_ratio": round(initializer_bytes(graph) / initializer_bytes(fp32_graph), 4),
        # what ONNX Runtime holds after loading (INT4 widened to INT8, its constant folding): engines.memory
        "runtime_weight_bytes_fp32": runtime["fp32"],
        "runtime_weight_bytes_hqs": runtime["hqs"],
        "runtime_weight_ratio": round(runtime["hqs"] / runtime["fp32"], 4),
        "latency_p50_ms_fp32": round(latency.p50_ms("fp32"), 2),
        "latency_p50_ms_hqs": round(latency.p50_ms("hqs"), 2),
        "speed_ratio": round(latency.ratio("hqs"), 3),
        "parity": {"max_map_diff": float(f"{check.map_rel_diff:.3g}"),
                   "max_score_diff": float(f"{check.max_score_drift:.3g}")},
    }

