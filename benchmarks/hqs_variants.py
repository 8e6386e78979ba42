"""The variants ``bench_hqs.py`` compares, each built from a fresh copy of the trained model into an ONNX graph.

Every quantized variant gets the same refits after its plan (``quantization.calibrate.stage2``: QAT of the
auto-encoder when the head uses it, the location head refitted on the quantized backbone when the head uses it)
and its own normal statistics on the held-back goods; ``fp32_ft`` fine-tunes, in FP32 and for the same steps, what
the shipped graph trains (the auto-encoder). ``ort_static`` is ONNX Runtime's own ``quantize_static`` of the
fine-tuned FP32 graph, its location head refitted and its normal statistics fitted on the features and maps its
own quantized graph computes (``OrtStaticRefit``).

The HQS variants share one measurement (signals on the probe, per seed) and fork after it:

    hqs        knapsack allocation, AdaRound for the 4-bit units, stage 2     (what calibrate ships)
    hqs_raad   RAAD's step function instead of the knapsack
    hqs_rtn    round-to-nearest instead of AdaRound
    hqs_ptq    no stage 2 (no QAT, no location refit)
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_inspector.data.synthetic import probe_from_goods
from edge_inspector.export.initializers import dedupe_initializers, narrow_index_initializers
from edge_inspector.export.onnx_export import export_onnx
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import make_scorer
from edge_inspector.quantization.calibrate import CalibrateOptions, finish, measure, plan_units, prepare, stage2
from edge_inspector.quantization.qat import finetune
from edge_inspector.quantization.qdq_bundle import qdq_graph
from edge_inspector.quantization.targets import apply_target
from edge_inspector.quantization.units import apply_plan, set_mode

HQS_FORKS = {
    "hqs": {},
    "hqs_raad": {"allocation": "raad"},
    "hqs_rtn": {"rounding": "nearest"},
    "hqs_ptq": {"stage_2": False},
}
VARIANTS = ("fp32", "fp32_ft", "w8a8", "w4a8", "ort_static", *HQS_FORKS)


@dataclass
class Built:
    graph: onnx.ModelProto
    notes: dict = field(default_factory=dict)


def clean(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The lossless clean-ups every graph gets, so sizes compare fairly."""
    dedupe_initializers(graph)
    narrow_index_initializers(graph)
    return graph


class VariantBuilder:
    """Builds the variants of one seed; the HQS measurement is made once, on first use, and forked."""

    def __init__(self, model, preset, head: str, fit_images: np.ndarray, holdout: np.ndarray,
                 options: CalibrateOptions, work: Path):
        self.model, self.preset, self.head = model, preset, head
        self.fit_images, self.holdout, self.options, self.work = fit_images, holdout, options, work
        self._measured = None

    def scorer(self):
        scorer = make_scorer(copy.deepcopy(self.model), self.preset, self.head)
        fit_normal_statistics(scorer, self.holdout)
        return scorer

    def export(self, scorer, tag: str, quantized: bool) -> onnx.ModelProto:
        fit_normal_statistics(scorer, self.holdout)  # this variant's own normal map and fusion statistics
        set_mode(scorer, "float")
        graph = onnx.load(str(export_onnx(scorer, self.work / f"{tag}.onnx")))
        if quantized:
            set_mode(scorer, "quant")
            graph = qdq_graph(scorer, graph, small=self.options.small)
        return clean(graph)

    def build(self, variant: str) -> Built:
        if variant in HQS_FORKS:
            return self._hqs(variant)
        scorer = self.scorer()
        if variant == "fp32":
            return Built(self.export(scorer, variant, False))
        if variant == "fp32_ft":
            report = finetune(scorer, self.fit_images, self.preset, self.options.qat, quantized=False)
            return Built(self.export(scorer, variant, False), {"steps": report.steps})
        if variant == "ort_static":
            from benchmarks.ort_static import ort_static_refit

            finetune(scorer, self.fit_images, self.preset, self.options.qat, quantized=False)
            return Built(*ort_static_refit(self, scorer))
        if variant in ("w8a8", "w4a8"):
            return self._uniform(scorer, variant)
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")

    def calibration(self) -> np.ndarray:
        rng = np.random.default_rng(self.options.seed)
        return self.fit_images[rng.permutation(len(self.fit_images))[: self.options.n_calibration]]

    def _uniform(self, scorer, variant: str) -> Built:
        from edge_inspector.quantization.adaround import adaround

        units = prepare(scorer, self.calibration(), self.options)
        apply_target(scorer, units, self.options.target, self.options.weight_range)
        def precision(unit) -> str:  # pins hold: the stem stays FP32 on ONNX Runtime, first and last 8 bits
            if unit.min_bits > 8:
                return "keep"
            return "w8a8" if variant == "w8a8" or unit.min_bits > 4 else "w4a8"

        plan = {u.name: precision(u) for u in units}
        apply_plan(scorer, units, plan)
        if variant == "w4a8" and self.options.rounding == "adaround":  # the rounding HQS's 4-bit units get
            adaround(scorer, units, plan, self.calibration(), self.options.adaround)
        report = stage2(scorer, self.fit_images, self.preset, self.options.qat)
        return Built(self.export(scorer, variant, True), {"qat_steps": report.steps})

    def _hqs(self, variant: str) -> Built:
        if self._measured is None:
            scorer = self.scorer()
            probe = probe_from_goods(self.holdout[: self.options.probe_normals], self.options.defects_per_good,
                                     self.options.seed)
            self._measured = (scorer, measure(scorer, self.fit_images, probe, self.options))
        scorer, measured = copy.deepcopy(self._measured)
        fork = dict(HQS_FORKS[variant])
        stage_2 = fork.pop("stage_2", True)
        options = replace(self.options, **fork)
        allocated, repaired = plan_units(measured, options)
        result = finish(scorer, measured, allocated, repaired, self.preset, self.fit_images, options, stage_2)
        notes = {"plan": result.plan, "average_bits": result.plan_bits / result.total_params,
                 "repair_steps": [s.promoted for s in result.repair.steps],
                 "probe_drop": {k: v.to_dict() for k, v in result.final_intervals.items()},
                 "attention_by_depth": [row.to_dict() for row in result.attention],
                 "adaround": result.adaround.convs, "qat_steps": result.qat.steps}
        return Built(self.export(scorer, variant, True), notes)


def work_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ei-bench-hqs-")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
