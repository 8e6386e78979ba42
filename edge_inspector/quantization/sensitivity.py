"""Per-unit HQS signals: how much one unit at low precision hurts anomaly detection, everything else FP32.

For each unit and each candidate precision (``w4a8``, ``w8a8``) on a probe set (held-back normal images plus
synthetic defects with exact masks):

* ``drift``: mean |anomaly map - FP32 map| over all probe images, in units of the FP32 map's std on normals;
* ``separation_loss``: FP32 defect separation minus quantized, where separation = (mean map inside the masks - mean
  outside) / std outside, on the defect images (positive = defects stand out less);
* ``image_auroc_change`` / ``pixel_auroc_change``: AUROC points on the probe set (quantized - FP32);
* ``hessian``: HAWQ-v2 term ``Tr(H_u) / n_u * ||Q(W_u) - W_u||^2`` from a Hutchinson estimate of the trace of the
  Hessian of the feature-reconstruction loss (units inside the frozen backbone are outside that loss: None);
* ``attention_entropy_change``: for attention units, mean softmax row entropy (nats) quantized minus FP32, next to
  the FP32 entropy itself (RAAD's "attention sharpness").

``combine`` turns them into one score per precision: each signal divided by its largest 4-bit value over all units,
then a weighted sum. That score is the allocator's penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_inspector.data.synthetic import ProbeSet
from edge_inspector.quantization.fakequant import fake_quant_weight
from edge_inspector.quantization.units import QuantUnit, apply_plan, quant_modules, set_mode

CANDIDATES = ("w4a8", "w8a8")
DEFAULT_WEIGHTS = {"drift": 1.0, "separation_loss": 1.0, "auroc_drop": 1.0, "hessian": 0.5, "attention": 0.5}


@dataclass
class UnitSignals:
    """Every HQS signal of one unit (per precision where it depends on it) and the combined score."""

    name: str
    kind: str
    params: int
    drift: dict[str, float] = field(default_factory=dict)
    separation_loss: dict[str, float] = field(default_factory=dict)
    image_auroc_change: dict[str, float] = field(default_factory=dict)
    pixel_auroc_change: dict[str, float] = field(default_factory=dict)
    hessian_trace: float | None = None
    """Hutchinson estimate of Tr(H_u) / n_u (per weight)."""
    hessian: dict[str, float] = field(default_factory=dict)
    attention_entropy: float | None = None
    attention_entropy_change: dict[str, float] = field(default_factory=dict)
    score: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult:
    maps: np.ndarray
    """(N, h, w) anomaly maps on the probe images (normals first), downsampled for metrics."""
    scores: np.ndarray
    entropy: dict[str, float]


def _auroc_points(fn: Callable, *args) -> float:
    try:
        return 100.0 * fn(*args)
    except ValueError:  # one class only (no defect pixels at this size): undefined, report NaN not a made-up number
        return float("nan")


class Prober:
    """Runs a quantization-wrapped ``AnomalyScorer`` on the probe set and measures the map-based signals.

    Args:
        scorer: an ``AnomalyScorer`` whose units were wrapped and calibrated.
        units: the units of ``scorer``.
        probe: the probe images.
        batch_size: images per forward pass.
        stride: downsampling of the maps for metrics (the maps are upsampled from a coarse grid anyway).
    """

    def __init__(self, scorer: nn.Module, units: list[QuantUnit], probe: ProbeSet, batch_size: int = 8, stride: int = 4):
        from edge_inspector.training.metrics import image_auroc, pixel_auroc

        self.scorer, self.units, self.probe = scorer, units, probe
        self.batch_size, self.stride = batch_size, stride
        self._image_auroc, self._pixel_auroc = image_auroc, pixel_auroc
        self.images = torch.from_numpy(np.ascontiguousarray(probe.images()))
        self.labels = probe.labels()
        self.masks = probe.all_masks()[:, ::stride, ::stride]
        self.attention = {u.name: scorer.get_submodule(u.name) for u in units if u.kind == "attention"}
        self._backbone_prefix = "model.backbone."
        self._feature_cache: dict[int, torch.Tensor] = {}
        self.reference = self.run({})

    @torch.no_grad()
    def run(self, plan: dict[str, str]) -> ProbeResult:
        """Maps, scores and attention entropies with ``plan`` applied (units not in it stay FP32).

        When every quantized unit lies after the frozen backbone, the backbone's FP32 features are computed once
        and reused (the backbone is most of a probe pass's cost).
        """
        apply_plan(self.scorer, self.units, plan)
        set_mode(self.scorer, "quant")
        entropies: dict[str, list[float]] = {name: [] for name in self.attention}
        hooks = [m.register_forward_hook(self._entropy_hook(entropies[name])) for name, m in self.attention.items()
                 if hasattr(m, "weights")]
        reuse = self._can_reuse_features(plan)
        maps, scores = [], []
        try:
            for i, start in enumerate(range(0, len(self.images), self.batch_size)):
                batch = self.images[start : start + self.batch_size]
                if reuse:
                    anomaly_map, score = self._from_features(self._features(i, batch))
                else:
                    anomaly_map, score = self.scorer(batch)
                maps.append(anomaly_map[:, 0, :: self.stride, :: self.stride].numpy())
                scores.append(score.numpy())
        finally:
            for hook in hooks:
                hook.remove()
        entropy = {name: float(np.mean(v)) for name, v in entropies.items() if v}
        return ProbeResult(np.concatenate(maps), np.concatenate(scores), entropy)

    def _can_reuse_features(self, plan: dict[str, str]) -> bool:
        model = getattr(self.scorer, "model", None)
        if not all(hasattr(model, a) for a in ("features", "reconstruct", "normalize")):
            return False
        if getattr(self.scorer, "head", "reconstruction") != "reconstruction":
            return False  # the location head reads other backbone layers: no shortcut
        return not any(p != "keep" and name.startswith(self._backbone_prefix) for name, p in plan.items())

    def _features(self, index: int, batch: torch.Tensor) -> torch.Tensor:
        """FP32 backbone features of probe batch ``index`` (computed on first use, with every unit FP32)."""
        if index not in self._feature_cache:
            model = self.scorer.model
            saved = {n: m.precision for n, m in quant_modules(self.scorer).items()}
            for name, module in quant_modules(self.scorer).items():
                if name.startswith(self._backbone_prefix):
                    module.precision = "keep"
            self._feature_cache[index] = model.features(model.normalize(batch))
            for name, module in quant_modules(self.scorer).items():
                module.precision = saved[name]
        return self._feature_cache[index]

    def _from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scorer's outputs from given backbone features (same ops as ``scorer(images)`` after the backbone)."""
        error = (features - self.scorer.model.reconstruct(features)).square().mean(dim=1, keepdim=True)
        anomaly_map = self.scorer.refine({"reconstruction": error})
        return anomaly_map, self.scorer.score(anomaly_map)

    @staticmethod
    def _entropy_hook(sink: list[float]):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            attn, _ = module.weights(inputs[0])
            sink.append(float(-(attn * torch.log(attn.clamp(min=1e-12))).sum(-1).mean()))

        return hook

    def metrics(self, result: ProbeResult) -> dict[str, float]:
        normal = result.maps[self.labels == 0]
        defect_maps, defect_masks = result.maps[self.labels == 1], self.masks[self.labels == 1]
        inside, outside = defect_maps[defect_masks], defect_maps[~defect_masks]
        return {
            "normal_std": float(normal.std()),
            "separation": float((inside.mean() - outside.mean()) / max(outside.std(), 1e-12)) if inside.size else 0.0,
            "image_auroc": _auroc_points(self._image_auroc, result.scores, self.labels),
            "pixel_auroc": _auroc_points(self._pixel_auroc, result.maps, self.masks),
        }

    def unit_signals(self, unit: QuantUnit, precision: str, signals: UnitSignals) -> None:
        """Fill ``signals`` with the map-based signals of ``unit`` alone at ``precision``."""
        ref, ref_m = self.reference, self.metrics(self.reference)
        result = self.run({unit.name: precision})
        m = self.metrics(result)
        signals.drift[precision] = float(np.abs(result.maps - ref.maps).mean() / max(ref_m["normal_std"], 1e-12))
        signals.separation_loss[precision] = ref_m["separation"] - m["separation"]
        signals.image_auroc_change[precision] = m["image_auroc"] - ref_m["image_auroc"]
        signals.pixel_auroc_change[precision] = m["pixel_auroc"] - ref_m["pixel_auroc"]
        if unit.name in ref.entropy:
            signals.attention_entropy = ref.entropy[unit.name]
            signals.attention_entropy_change[precision] = result.entropy[unit.name] - ref.entropy[unit.name]


def hutchinson_traces(
    loss_fn: Callable[[], torch.Tensor],
    groups: dict[str, list[nn.Parameter]],
    samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Hutchinson estimates of ``Tr(H_g) / n_g`` for each parameter group's diagonal Hessian block.

    One Rademacher vector over all groups at once per sample: ``v_g . (H v)_g`` is an unbiased estimate of
    ``Tr(H_gg)`` because the cross terms have zero mean, so one Hessian-vector product serves every group.
    """
    params = [p for ps in groups.values() for p in ps]
    gen = torch.Generator().manual_seed(seed)
    totals = {name: 0.0 for name in groups}
    for _ in range(samples):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs)
        i = 0
        for name, ps in groups.items():
            for _p in ps:
                totals[name] += float((vs[i] * hv[i]).sum())
                i += 1
    return {
        name: totals[name] / samples / max(sum(p.numel() for p in groups[name]), 1) for name in groups
    }


def hawq_terms(unit: QuantUnit, scorer: nn.Module, trace_per_weight: float) -> dict[str, float]:
    """HAWQ-v2 ``Tr(H)/n * ||Q(W) - W||^2`` of ``unit`` at each candidate precision."""
    modules = quant_modules(scorer)
    out = {}
    for precision, bits in (("w4a8", 4), ("w8a8", 8)):
        err = 0.0
        for conv_name in unit.convs:
            w = modules[conv_name].conv.weight.detach()
            err += float((fake_quant_weight(w, bits) - w).square().sum())
        out[precision] = trace_per_weight * err
    return out


def combine(signals: list[UnitSignals], weights: dict[str, float] | None = None) -> None:
    """Set ``score[precision]`` of every unit: each signal scaled by its largest 4-bit value, weighted, summed.

    Only harm counts: an AUROC gain, a separation gain or a sharper attention never lowers a score below the others.
    NaN signals (undefined on this probe set) count as 0.
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}

    def parts(s: UnitSignals, p: str) -> dict[str, float]:
        auroc = -min(np.nan_to_num(s.image_auroc_change.get(p, 0.0)), 0) - min(
            np.nan_to_num(s.pixel_auroc_change.get(p, 0.0)), 0)
        return {
            "drift": max(s.drift.get(p, 0.0), 0.0),
            "separation_loss": max(np.nan_to_num(s.separation_loss.get(p, 0.0)), 0.0),
            "auroc_drop": auroc,
            "hessian": max(s.hessian.get(p, 0.0), 0.0),
            "attention": abs(s.attention_entropy_change.get(p, 0.0)),
        }

    scale = {k: max((parts(s, "w4a8")[k] for s in signals), default=0.0) for k in weights}
    for s in signals:
        for p in CANDIDATES:
            values = parts(s, p)
            s.score[p] = float(sum(weights[k] * values[k] / scale[k] for k in weights if scale[k] > 0))


def measure_signals(
    scorer: nn.Module,
    units: list[QuantUnit],
    probe: ProbeSet,
    reconstruction_loss: Callable[[], torch.Tensor] | None,
    hessian_samples: int = 8,
    progress: bool = True,
    prober: Prober | None = None,
) -> list[UnitSignals]:
    """All signals for all units (the expensive step: two probe passes per unit, plus the Hessian estimate).

    Args:
        reconstruction_loss: closure computing the FP32 model's feature-reconstruction loss on normal images, for
            the Hessian term; None skips it.
        prober: a ``Prober`` already built on ``probe`` (reused by the caller for the repair step).
    """
    prober = prober or Prober(scorer, units, probe)
    signals = [UnitSignals(u.name, u.kind, u.params) for u in units]
    if reconstruction_loss is not None and hessian_samples > 0:
        modules = quant_modules(scorer)
        groups = {
            u.name: [modules[c].conv.weight for c in u.convs if modules[c].conv.weight.requires_grad] for u in units
        }
        groups = {k: v for k, v in groups.items() if v}
        apply_plan(scorer, units, {})
        set_mode(scorer, "float")
        # no trainable unit (a location-head graph is the frozen backbone alone): no curvature term to measure
        traces = hutchinson_traces(reconstruction_loss, groups, hessian_samples) if groups else {}
        for s, u in zip(signals, units):
            if u.name in traces:
                s.hessian_trace = traces[u.name]
                s.hessian = hawq_terms(u, scorer, traces[u.name])
    for s, u in tqdm(list(zip(signals, units)), desc="HQS signals", disable=not progress):
        for precision in CANDIDATES:
            if precision == "w4a8" and u.min_bits > 4:
                continue
            prober.unit_signals(u, precision, s)
    combine(signals)
    apply_plan(scorer, units, {})
    return signals
