"""HQS end to end: trained FP32 HaloAE -> per-unit signals -> bit plan -> repair -> QAT -> QDQ bundle + plan files.

Data use: activation ranges and QAT come from the fit split of ``<data>/train/good``; the probe set (signals,
repair), normal statistics and thresholds come from the held-back split (the same seeded split training used).
Test images are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_inspector.data.synthetic import ProbeSet
from edge_inspector.export.parity import graph_parity
from edge_inspector.log import kv
from edge_inspector.quantization.attention_quant import attach_to_blocks
from edge_inspector.quantization.bitplan import UnitCost, allocate, capacity_bits, plan_bits, repair
from edge_inspector.quantization.fakequant import PRECISION_WEIGHT_BITS
from edge_inspector.quantization.qat import QatOptions, QatReport, finetune
from edge_inspector.quantization.report import plan_rows, write_plan
from edge_inspector.quantization.sensitivity import Prober, measure_signals
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.quantization.activation_grids import (
    mark_unsigned_activations,
    share_input_grids,
    tie_activation_ranges,
)
from edge_inspector.quantization.units import (
    QuantUnit,
    apply_plan,
    discover_units,
    quant_modules,
    set_mode,
    unused_convs,
    wrap_units,
)
from edge_inspector.model.scorer import heads_needed

log = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt")
TRAINING_ONLY = ("model.image_head", "model.classifier")
"""Heads that only shape training: not exported, never quantized."""


@dataclass
class CalibrateOptions:
    budget_bits: float | None = 5.0
    """Average weight bits over all units (exclusive with ``budget_bytes``)."""
    budget_bytes: int | None = None
    tolerance: float = 1.0
    """Allowed validation AUROC drop (points, image or pixel, on the probe set) before repair promotes units."""
    n_calibration: int = 32
    n_probe_normal: int = 16
    n_probe_defects: int = 16
    observer: str = "percentile"
    percentile: float = 99.99
    hessian_samples: int = 4
    qat: QatOptions = field(default_factory=QatOptions)
    small: bool = True
    """Write 4-bit weights as true INT4 initializers (half their bytes; the engines widen them to INT8 containers
    on load, so they still run as integer kernels). False: INT8 containers in the file too."""
    target: str = "onnxruntime"
    """The engine the bundle is for. ``onnxruntime``: activations read only by a ReLU use the unsigned 8-bit grid
    (what ORT's CPU kernels run fast). ``tensorrt``: every activation on the signed grid, which TensorRT runs as
    calibrated (it has no unsigned INT8; an onnxruntime bundle loses one bit on those activations there)."""
    seed: int = 0
    latency_runs: int = 30
    """Interleaved cycles (one run of the FP32 and one of the HQS graph each) timed for the summary's latency."""
    threads: int = 1
    progress: bool = True


def prepare(scorer: nn.Module, calibration: np.ndarray, options: CalibrateOptions) -> list[QuantUnit]:
    """Fold BN, find and wrap the units, choose each activation's grid (signed, or unsigned after a ReLU), record
    activation ranges on ``calibration`` images, and quantize conv inputs that other operations read too (residual
    block outputs) once for all their readers."""
    if options.target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {options.target!r}")
    scorer.eval()
    with torch.no_grad():
        fold_batchnorm(scorer, torch.from_numpy(np.ascontiguousarray(calibration[:1])))
    # the location head is refitted on the quantized features instead (refit_location)
    skip = TRAINING_ONLY + ("model.location",) + unused_convs(scorer, torch.from_numpy(np.ascontiguousarray(calibration[:1])))
    units = discover_units(scorer, skip=skip)
    wrap_units(scorer, units, options.observer, options.percentile)
    first = torch.from_numpy(np.ascontiguousarray(calibration[:1]))
    attach_to_blocks(scorer, [u.name for u in units if u.kind == "attention"], first, options.observer,
                     options.percentile, signed_probabilities=options.target == "tensorrt")
    if options.target == "onnxruntime":
        mark_unsigned_activations(scorer, first)
    set_mode(scorer, "calibrate")
    with torch.no_grad():
        for start in range(0, len(calibration), 8):
            scorer(torch.from_numpy(np.ascontiguousarray(calibration[start : start + 8])))
    set_mode(scorer, "float")
    tie_activation_ranges(scorer, torch.from_numpy(np.ascontiguousarray(calibration[:1])))
    share_input_grids(scorer, torch.from_numpy(np.ascontiguousarray(calibration[:1])))
    return units


def auroc_drop(prober: Prober, plan: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Validation AUROC drop of ``plan`` (the worse of image and pixel, in points) and its metrics."""
    ref = prober.metrics(prober.reference)
    now = prober.metrics(prober.run(plan))
    drop = max(ref["image_auroc"] - now["image_auroc"], ref["pixel_auroc"] - now["pixel_auroc"])
    return float(np.nan_to_num(drop)), now


def parity(scorer: nn.Module, graph: onnx.ModelProto, images: np.ndarray, threads: int = 1) -> dict[str, float]:
    """Largest ORT-vs-torch map difference (relative to each image's largest map value) and score difference
    (relative), as the plan files record them (``export.parity.graph_parity``)."""
    report = graph_parity(scorer, graph, images, threads)
    return {"max_map_diff": report.map_rel_diff, "max_score_diff": report.max_score_drift}


@dataclass
class HqsResult:
    units: list[QuantUnit]
    signals: list
    plan: dict[str, str]
    allocated: dict[str, str]
    repair: Any
    qat: QatReport
    metrics_fp32: dict[str, float]
    metrics_hqs: dict[str, float]
    total_params: int
    plan_bits: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_hqs(
    scorer: nn.Module,
    preset,
    fit_images: np.ndarray,
    probe: ProbeSet,
    options: CalibrateOptions,
) -> HqsResult:
    """Signals, allocation, repair and QAT on an FP32 scorer (modified in place: wrapped, planned, fine-tuned)."""
    rng = np.random.default_rng(options.seed)
    calibration = fit_images[rng.permutation(len(fit_images))[: options.n_calibration]]
    units = prepare(scorer, calibration, options)
    if options.target == "onnxruntime":
        pin_narrow_input_convs(scorer, units)
    model = scorer.model
    loss_images = model.normalize(torch.from_numpy(np.ascontiguousarray(calibration[:2])))

    def reconstruction_loss() -> torch.Tensor:
        f = model.features(loss_images)
        return (model.reconstruct(f) - f).square().mean()

    prober = Prober(scorer, units, probe)
    signals = measure_signals(scorer, units, probe, reconstruction_loss, options.hessian_samples,
                              options.progress, prober=prober)
    costs = [UnitCost(s.name, u.params, dict(s.score), u.min_bits) for s, u in zip(signals, units)]
    capacity = capacity_bits(costs, options.budget_bits, options.budget_bytes)
    # FP32 pins (pin_narrow_input_convs) are a latency decision outside the budget, like repair's promotions: the
    # budget gets what they cost above 8 bits. Charged at 32 bits, the stem's few hundred weights pushed an early,
    # sensitive unit down to 4 bits.
    keep_bits, w8_bits = PRECISION_WEIGHT_BITS["keep"], PRECISION_WEIGHT_BITS["w8a8"]
    capacity += sum(c.params * (keep_bits - w8_bits) for c in costs if c.min_bits >= keep_bits)
    allocated = allocate(costs, capacity)
    # Repair judges plans before stage 2 (QAT, the location refit), on the FP32 model's head; the summary reports
    # the shipped model's drop after it (``final_probe_drop``). Tried: the location refit inside repair (it is
    # closed form) made the 16+16-image probe's drop non-monotonic (a promotion raised it 1.57 -> 1.69) and repair
    # chased that noise into six promotions and 0.74x FP32 latency, for a test-set accuracy the plan below has too.
    repaired = repair(costs, allocated, lambda plan: auroc_drop(prober, plan)[0], options.tolerance)
    apply_plan(scorer, units, repaired.plan)
    set_mode(scorer, "quant")
    heads = heads_needed(scorer.head)
    if "reconstruction" in heads:
        qat_report = finetune(scorer, fit_images, preset, options.qat, quantized=True, progress=options.progress)
    else:  # the shipped graph holds no auto-encoder: nothing in it trains (the backbone is frozen)
        qat_report = QatReport(steps=0, losses={})
    if "location" in heads:
        refit_location(scorer, fit_images)
    # QAT moved the weights: the reference stays the FP32 model the prober measured first
    drop, metrics_hqs = auroc_drop(prober, repaired.plan)
    if drop > options.tolerance:
        log.warning("after stage 2 the probe AUROC drop exceeds the tolerance",
                    extra=kv(drop_points=round(drop, 2), tolerance=options.tolerance,
                             before_stage2=round(repaired.drop, 2)))
    apply_plan(scorer, units, repaired.plan)
    set_mode(scorer, "quant")
    return HqsResult(units, signals, repaired.plan, allocated, repaired, qat_report,
                     prober.metrics(prober.reference), metrics_hqs, sum(u.params for u in units),
                     plan_bits(costs, repaired.plan), plan_rows(units, signals, repaired.plan))


NARROW_INPUT_CHANNELS = 4
"""A (non-grouped) conv reading at most this many channels, the image's first conv, stays FP32 on ONNX Runtime."""


def pin_narrow_input_convs(scorer: nn.Module, units: list[QuantUnit]) -> list[str]:
    """Pin to ``keep`` the units whose conv reads few channels (the first conv on the 3-channel image); returns them.

    Why, for the ONNX Runtime target only: ORT's integer conv runs a 3-channel 3x3 stem 2.3-2.6x slower than its
    float conv; rewritten as a 2x2 conv on a space-to-depth input (12 channels) the integer kernel only matches the
    float 3x3 stem, before the extra space-to-depth op (``benchmarks/bench_int8_kernels.py``); and such a conv
    holds a few hundred weights, so INT8 saves neither time nor bytes. A plan with the Lite0 stem
    at W8A8 and block 0's depthwise conv in FP32 (an FP32 conv between two integer ones) ran at 0.77x FP32 latency,
    against 0.67x with both in FP32 (2 threads, one-off check).
    """
    modules = quant_modules(scorer)
    pinned = []
    for unit in units:
        convs = [modules[name].conv for name in unit.convs]
        if all(c.groups == 1 and c.in_channels <= NARROW_INPUT_CHANNELS for c in convs):
            unit.min_bits = PRECISION_WEIGHT_BITS["keep"]
            unit.pin_reason = f"reads {convs[0].in_channels} channels: FP32 on ONNX Runtime"
            pinned.append(unit.name)
    return pinned


@torch.no_grad()
def refit_location(scorer: nn.Module, fit_images: np.ndarray) -> None:
    """Stage 2 for the location head: refit its Gaussians on the *quantized* backbone's features (the closed-form
    counterpart of QAT: the statistics absorb the quantization shift), then round its precision factors to INT8."""
    model = scorer.model
    model.fit_location(torch.from_numpy(np.ascontiguousarray(fit_images)))
    model.location.quantize()


def summary_of(result: HqsResult, options: CalibrateOptions) -> dict[str, Any]:
    """Whole-model figures for the plan files and the command's final print."""
    ref, now = result.metrics_fp32, result.metrics_hqs
    bits = result.plan_bits / max(result.total_params, 1)
    return {
        "units": len(result.units),
        "weights": result.total_params,
        "budget": f"{options.budget_bits} bits average" if options.budget_bits is not None
        else f"{options.budget_bytes} bytes",
        "average_weight_bits": round(bits, 3),
        "unit_weight_bytes": int(result.plan_bits / 8),
        "unit_weight_bytes_fp32": result.total_params * 4,
        "precisions": {p: sum(v == p for v in result.plan.values()) for p in ("w4a8", "w8a8", "keep")},
        "repair_steps": [f"{s.promoted} -> {s.precision} (drop {s.drop_before:.2f} -> {s.drop_after:.2f})"
                         for s in result.repair.steps],
        "repair_within_tolerance": result.repair.within_tolerance,
        "qat_steps": result.qat.steps,
        "qat_losses": result.qat.losses,
        "probe_image_auroc_fp32": ref["image_auroc"],
        "probe_image_auroc_hqs": now["image_auroc"],
        "probe_pixel_auroc_fp32": ref["pixel_auroc"],
        "probe_pixel_auroc_hqs": now["pixel_auroc"],
        # repair judged the plan before stage 2 (QAT / location refit); this is the shipped model's drop
        "final_probe_drop": round(final_drop(result), 2),
        "final_within_tolerance": final_drop(result) <= options.tolerance,
    }


def final_drop(result: HqsResult) -> float:
    """Probe-set AUROC drop (points, the worse of image and pixel) of the model after stage 2."""
    ref, now = result.metrics_fp32, result.metrics_hqs
    return float(np.nan_to_num(max(ref["image_auroc"] - now["image_auroc"], ref["pixel_auroc"] - now["pixel_auroc"])))


def finish_plan_files(result: HqsResult, summary: dict[str, Any], folders: list[Path], name: str) -> list[Path]:
    """Write the plan YAML + markdown into every folder in ``folders``."""
    paths: list[Path] = []
    for folder in folders:
        paths += list(write_plan(folder, name, result.rows, summary))
    return paths
