"""The probe set run through a bit plan: anomaly maps, scores and attention statistics, with every drop's interval.

``Prober`` runs a quantization-prepared ``AnomalyScorer`` on the probe set (held-back good images plus synthetic
defects with exact masks) under any bit plan. Its figures:

* maps and scores, and from them image / pixel AUROC, defect separation and the map std on normals (``metrics``);
* the drop of a plan against FP32 with a paired bootstrap interval over the probe's parts (``drop``);
* per attention block, the mean row entropy and, for the blocks asked for, the mean KL(FP32 || plan) of the
  attention rows (``quantization.raad`` has the per-region table).

Most HQS runs quantize one unit at a time, and most units after the frozen backbone: when a plan quantizes nothing
inside the backbone, its FP32 outputs for the probe (computed once) are replayed in its place (``_ReplayBackbone``),
so the model's own forward runs only after the backbone, whatever its heads do with the maps.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edge_inspector.data.synthetic import ProbeSet
from edge_inspector.quantization import bootstrap
from edge_inspector.quantization.raad import capturing, row_entropy, row_kl
from edge_inspector.quantization.units import QuantUnit, apply_plan, set_mode

BACKBONE = "model.backbone"


@dataclass
class ProbeResult:
    maps: np.ndarray
    """(N, h, w) anomaly maps on the probe images (normals first), downsampled for metrics."""
    scores: np.ndarray
    entropy: dict[str, float] = field(default_factory=dict)
    """Attention block -> mean row entropy (nats) over the probe."""
    kl: dict[str, float] = field(default_factory=dict)
    """Attention block -> mean KL(FP32 row || this plan's row) (nats), for the blocks asked for."""


def _auroc_points(fn: Callable, *args) -> float:
    try:
        return 100.0 * fn(*args)
    except ValueError:  # one class only (no defect pixels at this size): undefined, report NaN not a made-up number
        return float("nan")


class _ReplayBackbone(nn.Module):
    """Stands in for a frozen ``Backbone``: returns the cached FP32 maps of the current probe batch by layer name."""

    def __init__(self, layers: list[str], maps: dict[str, torch.Tensor]):
        super().__init__()
        self.layers, self.maps = layers, maps

    def forward(self, x: torch.Tensor, layers: list[str] | None = None) -> list[torch.Tensor]:
        return [self.maps[name] for name in (layers or self.layers)]


class Prober:
    """Runs a quantization-prepared ``AnomalyScorer`` on the probe set under bit plans.

    Args:
        scorer: an ``AnomalyScorer`` whose units were wrapped and calibrated.
        units: the units of ``scorer``.
        probe: the probe images.
        batch_size: images per forward pass.
        stride: downsampling of the maps for metrics (the maps are upsampled from a coarse grid anyway).
        draws: bootstrap redraws for intervals.
    """

    def __init__(self, scorer: nn.Module, units: list[QuantUnit], probe: ProbeSet, batch_size: int = 8,
                 stride: int = 4, draws: int = 500):
        from edge_inspector.training.metrics import image_auroc, pixel_auroc

        self.scorer, self.units, self.probe = scorer, units, probe
        self.batch_size, self.stride, self.draws = batch_size, stride, draws
        self._image_auroc, self._pixel_auroc = image_auroc, pixel_auroc
        self.images = torch.from_numpy(np.ascontiguousarray(probe.images()))
        self.labels = probe.labels()
        self.masks = probe.all_masks()[:, ::stride, ::stride]
        backbone = getattr(getattr(scorer, "model", None), "backbone", None)
        self._layers: list[str] | None = list(backbone.layers) if hasattr(backbone, "layers") else None
        self._backbone_cache: dict[int, dict[str, torch.Tensor]] = {}
        self.reference = self.run({})
        self._reference_stats = self.per_image(self.reference)

    def _batches(self):
        for i, start in enumerate(range(0, len(self.images), self.batch_size)):
            yield i, self.images[start : start + self.batch_size]

    @torch.no_grad()
    def run(self, plan: dict[str, str], kl_blocks: tuple[str, ...] = ()) -> ProbeResult:
        """Maps, scores and attention statistics with ``plan`` applied (units not in it stay FP32); the KL of the
        attention rows against FP32 for ``kl_blocks`` (each batch then also runs in FP32)."""
        replay = self._layers is not None and not any(
            p != "keep" and name.startswith(BACKBONE + ".") for name, p in plan.items())
        maps, scores = [], []
        entropy: dict[str, list[float]] = {}
        kl: dict[str, list[float]] = {}
        for i, batch in self._batches():
            reference = self._forward(i, batch, {}, replay)[2] if kl_blocks else {}
            anomaly_map, score, seen = self._forward(i, batch, plan, replay)
            maps.append(anomaly_map[:, 0, :: self.stride, :: self.stride].numpy())
            scores.append(score.numpy())
            for name, (p, _) in seen.items():
                entropy.setdefault(name, []).append(float(row_entropy(p).mean()))
                if name in kl_blocks:
                    kl.setdefault(name, []).append(float(row_kl(reference[name][0], p).mean()))
        return ProbeResult(np.concatenate(maps), np.concatenate(scores),
                           {k: float(np.mean(v)) for k, v in entropy.items()}, {k: float(np.mean(v)) for k, v in kl.items()})

    def _forward(self, index: int, batch: torch.Tensor, plan: dict[str, str], replay: bool):
        """(map, score, attention probabilities by block) of one batch under ``plan``."""
        apply_plan(self.scorer, self.units, plan)
        set_mode(self.scorer, "quant")
        with self._replaying(index, batch, replay), capturing(self.scorer) as seen:
            anomaly_map, score = self.scorer(batch)
        return anomaly_map, score, dict(seen)

    @contextmanager
    def _replaying(self, index: int, batch: torch.Tensor, replay: bool):
        """While open, the model's backbone returns batch ``index``'s cached FP32 maps (when ``replay``)."""
        if not replay:
            yield
            return
        model = self.scorer.model
        if index not in self._backbone_cache:  # first use: the real backbone, every unit in it FP32 (plan {})
            saved = model.backbone
            self._backbone_cache[index] = dict(zip(self._layers, saved(model.normalize(batch))))
        real = model.backbone
        model.backbone = _ReplayBackbone(self._layers, self._backbone_cache[index])
        try:
            yield
        finally:
            model.backbone = real

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

    def per_image(self, result: ProbeResult) -> bootstrap.PerImage:
        return bootstrap.per_image(result.maps, self.masks, result.scores, self.labels)

    def drop(self, result: ProbeResult) -> dict[str, bootstrap.Interval]:
        """Image and pixel AUROC drop of ``result`` against FP32, in points, with paired bootstrap intervals over
        the probe's parts (``probe.groups``)."""
        ref, now = self.metrics(self.reference), self.metrics(result)
        exact = {"fp32": {k: ref[k] / 100 for k in ("image_auroc", "pixel_auroc")},
                 "plan": {k: now[k] / 100 for k in ("image_auroc", "pixel_auroc")}}
        found = bootstrap.intervals({"fp32": self._reference_stats, "plan": self.per_image(result)}, "fp32",
                                    self.probe.groups, self.draws, exact=exact)
        return {k: found["plan"][f"{k}_drop"] for k in ("image_auroc", "pixel_auroc")}
