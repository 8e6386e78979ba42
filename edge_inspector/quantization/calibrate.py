"""HQS end to end: trained FP32 HaloAE -> per-unit signals -> bit plan -> repair -> AdaRound -> QAT -> final check.

Data use: activation ranges, AdaRound and QAT come from the fit split of ``<data>/train/good``; the probe set
(signals, repair, the final check) is every held-back good image with synthetic defects made from it, and normal
statistics and thresholds come from the held-back split (the same split training used). Test images are never
touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_inspector.data.synthetic import ProbeSet
from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.model.scorer import heads_needed
from edge_inspector.quantization.activation_grids import (
    mark_unsigned_activations,
    share_input_grids,
    tie_activation_ranges,
)
from edge_inspector.quantization.adaround import AdaRoundOptions, AdaRoundReport, adaround
from edge_inspector.quantization.attention_quant import attach_to_blocks
from edge_inspector.quantization.bitplan import (
    ALLOCATIONS,
    RepairResult,
    UnitCost,
    allocate,
    allocate_step,
    capacity_bits,
    plan_bits,
    repair,
)
from edge_inspector.quantization.bootstrap import Interval
from edge_inspector.quantization.prober import Prober
from edge_inspector.quantization.qat import QatOptions, QatReport, finetune
from edge_inspector.quantization.raad import BlockAttention, attention_table
from edge_inspector.quantization.report import plan_rows
from edge_inspector.quantization.sensitivity import UnitSignals, measure_signals
from edge_inspector.quantization.targets import KEEP_BITS, TARGETS, TargetChoice, apply_target
from edge_inspector.quantization.units import (
    QuantUnit,
    apply_plan,
    discover_units,
    set_mode,
    unused_convs,
    wrap_units,
)

log = logging.getLogger(__name__)

TRAINING_ONLY = ("model.image_head", "model.classifier")
"""Heads that only shape training: not exported, never quantized."""
ROUNDINGS = ("nearest", "adaround")


@dataclass
class CalibrateOptions:
    budget_bits: float | None = None
    """Average weight bits over all units (exclusive with ``budget_bytes``); None with no ``budget_bytes``: 5 for
    ONNX Runtime, 8 (INT8 everywhere) for TensorRT."""
    budget_bytes: int | None = None
    allocation: str = "knapsack"
    """``knapsack`` (exact, sizes counted) or ``raad`` (RAAD's step function on sorted scores)."""
    tolerance: float = 1.0
    """Allowed probe AUROC drop (points, image or pixel) before repair promotes units, and for the final check."""
    accept_drop: bool = False
    """Ship a model that fails the final check (without it, ``workflows.calibrate`` raises after writing it)."""
    n_calibration: int = 32
    probe_normals: int | None = None
    """Held-back good images in the probe (None: all of them)."""
    defects_per_good: int = 3
    """Synthetic defects made from each probe normal (3: one CutPaste, one scar, one Perlin paste)."""
    bootstrap_draws: int = 500
    observer: str = "percentile"
    percentile: float = 99.99
    hessian_samples: int = 4
    rounding: str = "adaround"
    """How the 4-bit units' weights are rounded: ``adaround`` (learned) or ``nearest``."""
    adaround: AdaRoundOptions = field(default_factory=AdaRoundOptions)
    qat: QatOptions = field(default_factory=QatOptions)
    small: bool = True
    """Write 4-bit weights as true INT4 initializers (half their bytes; the engines widen them to INT8 containers
    on load, so they still run as integer kernels). False: INT8 containers in the file too."""
    target: str = "onnxruntime"
    """The engine the bundle is for (``quantization.targets``): activation grids, weight range, the candidates."""
    weight_range: str = "auto"
    """8-bit weight codes: ``full`` (-127..127), ``reduced`` (-63..63) or ``auto`` (what the target takes)."""
    seed: int = 0
    latency_runs: int = 30
    """Interleaved cycles (one run of the FP32 and one of the HQS graph each) timed for the summary's latency."""
    threads: int = 1
    progress: bool = True

    def budget(self) -> tuple[float | None, int | None]:
        """(average bits, bytes): the given budget, or the target's default."""
        if self.budget_bits is None and self.budget_bytes is None:
            return (8.0 if self.target == "tensorrt" else 5.0), None
        return self.budget_bits, self.budget_bytes

    def check(self) -> None:
        """Raises ConfigError on an unknown target, allocation or rounding, or a TensorRT budget below 8 bits."""
        for value, allowed, what in ((self.target, TARGETS, "target"), (self.allocation, ALLOCATIONS, "allocation"),
                                     (self.rounding, ROUNDINGS, "rounding")):
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        bits, _ = self.budget()
        if self.target == "tensorrt" and bits is not None and bits < 8:
            raise ConfigError(f"--budget-bits {bits} is below 8: TensorRT runs no INT4 convolution, so every unit is "
                              "INT8 or FP16 (8 = INT8 everywhere, more lets units stay FP16)")


def prepare(scorer: nn.Module, calibration: np.ndarray, options: CalibrateOptions) -> list[QuantUnit]:
    """Fold BN, find and wrap the units (and the attention blocks' matmuls), choose each activation's grid (signed,
    or unsigned after a ReLU), record activation ranges on ``calibration`` images, and quantize conv inputs that
    other operations read too (residual block outputs) once for all their readers."""
    options.check()
    scorer.eval()
    first = torch.from_numpy(np.ascontiguousarray(calibration[:1]))
    with torch.no_grad():
        fold_batchnorm(scorer, first)
    # the location head is refitted on the quantized features instead (refit_location)
    skip = TRAINING_ONLY + ("model.location",) + unused_convs(scorer, first)
    units = discover_units(scorer, skip=skip)
    wrap_units(scorer, units, options.observer, options.percentile)
    attach_to_blocks(scorer, [u.name for u in units if u.kind == "attention"], first, options.observer,
                     options.percentile, signed_probabilities=options.target == "tensorrt")
    if options.target == "onnxruntime":
        mark_unsigned_activations(scorer, first)
    set_mode(scorer, "calibrate")
    with torch.no_grad():
        for start in range(0, len(calibration), 8):
            scorer(torch.from_numpy(np.ascontiguousarray(calibration[start : start + 8])))
    set_mode(scorer, "float")
    tie_activation_ranges(scorer, first)
    share_input_grids(scorer, first)
    return units


def probe_drop(prober: Prober, plan: dict[str, str]) -> tuple[float, dict[str, Interval], dict[str, float]]:
    """(drop, image and pixel drop with intervals, metrics) of ``plan`` on the probe; the drop is the worse of
    image and pixel AUROC, in points (NaN counts 0)."""
    result = prober.run(plan)
    intervals = prober.drop(result)
    worst = max(intervals["image_auroc"].value, intervals["pixel_auroc"].value)
    return float(np.nan_to_num(worst)), intervals, prober.metrics(result)


@dataclass
class HqsResult:
    units: list[QuantUnit]
    signals: list[UnitSignals]
    plan: dict[str, str]
    allocated: dict[str, str]
    repair: RepairResult
    qat: QatReport
    metrics_fp32: dict[str, float]
    metrics_hqs: dict[str, float]
    total_params: int
    plan_bits: int
    target: TargetChoice
    final_drop: float
    final_intervals: dict[str, Interval]
    attention: list[BlockAttention]
    adaround: AdaRoundReport
    rows: list[dict[str, Any]] = field(default_factory=list)

    def within_tolerance(self, tolerance: float) -> bool:
        return self.final_drop <= tolerance


@dataclass
class Measured:
    """What the per-unit measurements left: the prepared scorer's units, their signals and costs, the prober."""

    units: list[QuantUnit]
    signals: list[UnitSignals]
    costs: list[UnitCost]
    prober: Prober
    calibration: np.ndarray
    target: TargetChoice


def measure(scorer: nn.Module, fit_images: np.ndarray, probe: ProbeSet, options: CalibrateOptions) -> Measured:
    """Prepare ``scorer`` (in place) and measure every unit's signals on ``probe``: the expensive step."""
    rng = np.random.default_rng(options.seed)
    calibration = fit_images[rng.permutation(len(fit_images))[: options.n_calibration]]
    units = prepare(scorer, calibration, options)
    choice = apply_target(scorer, units, options.target, options.weight_range)
    prober = Prober(scorer, units, probe, draws=options.bootstrap_draws)
    signals = measure_signals(scorer, units, probe, _reconstruction_loss(scorer.model, calibration),
                              options.hessian_samples, options.progress, prober=prober)
    costs = [UnitCost(s.name, u.params, dict(s.score), u.min_bits, KEEP_BITS[options.target])
             for s, u in zip(signals, units)]
    return Measured(units, signals, costs, prober, calibration, choice)


def plan_units(measured: Measured, options: CalibrateOptions) -> tuple[dict[str, str], RepairResult]:
    """(allocated plan, repaired plan) under the budget, by ``options.allocation``."""
    allocated = _allocate(measured.costs, options)
    # Repair judges plans before stage 2 (AdaRound, QAT, the location refit) with the FP32 model's head; the final
    # check is on the shipped model. Tried: the location refit inside repair; on a 16 + 16-image probe the drop was
    # not monotonic in promotions and repair chased that noise into six promotions and 0.74x FP32 latency.
    repaired = repair(measured.costs, allocated, lambda plan: probe_drop(measured.prober, plan)[0], options.tolerance)
    return allocated, repaired


def finish(scorer: nn.Module, measured: Measured, allocated: dict[str, str], repaired: RepairResult, preset,
           fit_images: np.ndarray, options: CalibrateOptions, stage_2: bool = True) -> HqsResult:
    """Apply the plan, round the 4-bit units, run stage 2 (``stage_2``), and check the shipped model on the probe."""
    units, prober = measured.units, measured.prober
    apply_plan(scorer, units, repaired.plan)
    rounding = (adaround(scorer, units, repaired.plan, measured.calibration, options.adaround, options.progress)
                if options.rounding == "adaround" else AdaRoundReport())
    qat_report = stage2(scorer, fit_images, preset, options.qat, options.progress) if stage_2 else QatReport(0)
    # the weights moved: the reference stays the FP32 model the prober measured first
    drop, intervals, metrics_hqs = probe_drop(prober, repaired.plan)
    if drop > options.tolerance:
        log.warning("the shipped model's probe AUROC drop exceeds the tolerance",
                    extra=kv(drop_points=round(drop, 2), tolerance=options.tolerance,
                             before_stage2=round(repaired.drop, 2)))
    probe = prober.probe
    attention = attention_table(scorer, units, probe.images(), probe.all_masks(), probe.labels(), repaired.plan)
    apply_plan(scorer, units, repaired.plan)
    set_mode(scorer, "quant")
    return HqsResult(units, measured.signals, repaired.plan, allocated, repaired, qat_report,
                     prober.metrics(prober.reference), metrics_hqs, sum(u.params for u in units),
                     plan_bits(measured.costs, repaired.plan), measured.target, drop, intervals, attention, rounding,
                     plan_rows(units, measured.signals, repaired.plan))


def run_hqs(scorer: nn.Module, preset, fit_images: np.ndarray, probe: ProbeSet, options: CalibrateOptions) -> HqsResult:
    """Signals, allocation, repair, AdaRound and stage 2 on an FP32 scorer (modified in place: wrapped, planned,
    fine-tuned, location head refitted), then the final check on the probe."""
    measured = measure(scorer, fit_images, probe, options)
    allocated, repaired = plan_units(measured, options)
    return finish(scorer, measured, allocated, repaired, preset, fit_images, options)


def _reconstruction_loss(model: nn.Module, calibration: np.ndarray):
    """The FP32 feature-reconstruction loss on two calibration images (the HAWQ term's curvature)."""
    images = model.normalize(torch.from_numpy(np.ascontiguousarray(calibration[:2])))

    def loss() -> torch.Tensor:
        f = model.features(images)
        return (model.reconstruct(f) - f).square().mean()

    return loss


def _allocate(costs: list[UnitCost], options: CalibrateOptions) -> dict[str, str]:
    bits, nbytes = options.budget()
    capacity = capacity_bits(costs, bits, nbytes)
    # FP32 pins (targets.pin_narrow_input_convs) are a latency decision outside the budget, like repair's
    # promotions: the budget gets what they cost above 8 bits. Charged at 32 bits, the stem's few hundred weights
    # pushed an early, sensitive unit down to 4 bits.
    capacity += sum(c.params * (c.keep_bits - 8) for c in costs if c.min_bits > 8)
    return allocate_step(costs, capacity) if options.allocation == "raad" else allocate(costs, capacity)


def stage2(scorer: nn.Module, fit_images: np.ndarray, preset, qat: QatOptions, progress: bool = False) -> QatReport:
    """The refits every quantized variant gets after its plan: QAT of what trains in the shipped graph (the
    auto-encoder, when the head uses it; the backbone is frozen) and the location head refitted on the quantized
    backbone (when the head uses it)."""
    set_mode(scorer, "quant")
    heads = heads_needed(scorer.head)
    report = (finetune(scorer, fit_images, preset, qat, quantized=True, progress=progress)
              if "reconstruction" in heads else QatReport(steps=0, losses={}))
    if "location" in heads:
        refit_location(scorer, fit_images)
    set_mode(scorer, "quant")
    return report


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
    bits, nbytes = options.budget()
    return {
        "units": len(result.units),
        "weights": result.total_params,
        "budget": f"{bits} bits average" if bits is not None else f"{nbytes} bytes",
        "allocation": options.allocation,
        "candidates": list(result.target.candidates),
        "weight_codes": result.target.weight_codes,
        "weight_codes_reason": result.target.weight_codes_reason,
        "average_weight_bits": round(result.plan_bits / max(result.total_params, 1), 3),
        "unit_weight_bytes": int(result.plan_bits / 8),
        "unit_weight_bytes_fp32": result.total_params * 4,
        "precisions": {p: sum(v == p for v in result.plan.values()) for p in ("w4a8", "w8a8", "keep")},
        "repair_steps": [f"{s.promoted} -> {s.precision} (drop {s.drop_before:.2f} -> {s.drop_after:.2f})"
                         for s in result.repair.steps],
        "repair_within_tolerance": result.repair.within_tolerance,
        "rounding_4bit": options.rounding,
        "adaround": result.adaround.convs,
        "qat_steps": result.qat.steps,
        "qat_losses": result.qat.losses,
        "probe": f"{options.probe_normals or 'all'} held-back goods + {options.defects_per_good} defects each",
        "probe_image_auroc_fp32": ref["image_auroc"],
        "probe_image_auroc_hqs": now["image_auroc"],
        "probe_pixel_auroc_fp32": ref["pixel_auroc"],
        "probe_pixel_auroc_hqs": now["pixel_auroc"],
        # the shipped model's drop, after stage 2, with 95% paired bootstrap intervals over the probe's parts
        "final_probe_drop": round(result.final_drop, 2),
        "final_drop_intervals": {k: v.to_dict() for k, v in result.final_intervals.items()},
        "final_within_tolerance": result.within_tolerance(options.tolerance),
        "attention_by_depth": [row.to_dict() for row in result.attention],
    }
