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
  the FP32 entropy itself (RAAD's "attention sharpness"), and ``attention_kl``: the mean KL(FP32 || quantized) of
  the attention rows, which is the ``attention`` part of the score.

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
from edge_inspector.quantization.prober import Prober
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
    attention_kl: dict[str, float] = field(default_factory=dict)
    """Mean KL(FP32 || quantized) of the block's attention rows (nats), with integer QK^T and AV."""
    score: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def unit_signals(prober: Prober, unit: QuantUnit, precision: str, signals: UnitSignals) -> None:
    """Fill ``signals`` with the map-based signals of ``unit`` alone at ``precision``."""
    ref, ref_m = prober.reference, prober.metrics(prober.reference)
    attention = (unit.name,) if unit.kind == "attention" else ()
    result = prober.run({unit.name: precision}, kl_blocks=attention)
    m = prober.metrics(result)
    signals.drift[precision] = float(np.abs(result.maps - ref.maps).mean() / max(ref_m["normal_std"], 1e-12))
    signals.separation_loss[precision] = ref_m["separation"] - m["separation"]
    signals.image_auroc_change[precision] = m["image_auroc"] - ref_m["image_auroc"]
    signals.pixel_auroc_change[precision] = m["pixel_auroc"] - ref_m["pixel_auroc"]
    if unit.name in ref.entropy:
        signals.attention_entropy = ref.entropy[unit.name]
        signals.attention_entropy_change[precision] = result.entropy[unit.name] - ref.entropy[unit.name]
    if unit.name in result.kl:
        signals.attention_kl[precision] = result.kl[unit.name]


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
            err += float((fake_quant_weight(w, bits, modules[conv_name].full_range) - w).square().sum())
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
            "attention": max(s.attention_kl.get(p, 0.0), 0.0),
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
            unit_signals(prober, u, precision, s)
    combine(signals)
    apply_plan(scorer, units, {})
    return signals
