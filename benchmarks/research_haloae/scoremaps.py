"""Scoring of raw grid maps exactly as the package's scorer does (blur, bilinear upsample, top-1 % mean), the
scoring variants of the ablation, and the metrics (``training/metrics.py``) per protocol part."""

from __future__ import annotations

import numpy as np
import torch

from edge_inspector.bundle.thresholds import quantile_threshold
from edge_inspector.model.blur import blur, gaussian_kernel, upsample_bilinear
from edge_inspector.model.location import LocationGaussian
from edge_inspector.training.metrics import evaluate_scores
from edge_inspector.model.scorer import topk_count

from features import STAGE_CHANNELS, Cache

TOPK = 0.01
PIXEL_FPR = 0.001
_location_cache: dict = {}


LOCATION_HEADS = {
    "loc8": (["stage4", "stage5", "stage6"], 32, 128),
    "loc16": (["stage4", "stage5", "stage6"], 16, 64),
}
"""name -> (layers, input pixels per cell, PCA dims). loc8: the shipped head (8x8 cells at 256, 1M floats);
loc16: 16x16 cells with 64 dims (the same 1M floats)."""


def location_maps(cache: Cache, grid: tuple[int, int], parts: list[str], which: str = "loc8") -> dict[str, torch.Tensor]:
    """A location head (shrinkage 0.01, blur 0.5) fitted on the fit images; its raw maps on holdout and ``parts``,
    bilinearly brought to ``grid`` (as ``HaloAE.location_map`` does)."""
    key = (cache.width, cache.height, grid, tuple(parts), which)
    if key in _location_cache:
        return _location_cache[key]
    layers, stride, dims = LOCATION_HEADS[which]
    loc_grid = (cache.height // stride, cache.width // stride)
    head = LocationGaussian(sum(STAGE_CHANNELS[n] for n in layers), loc_grid, dims, 0.01, 0.5)
    head.fit(cache.train.grid(layers, loc_grid, cache.train_index("fit")))
    ev = Evaluator(cache, [cache.width, cache.height], grid)
    out = {}
    with torch.no_grad():
        for part in ["holdout", *parts]:
            g = (cache.train.grid(layers, loc_grid, cache.train_index("holdout")) if part == "holdout"
                 else ev.grid_of(part, layers, loc_grid))
            out[part] = torch.nn.functional.interpolate(head(g), size=grid, mode="bilinear", align_corners=False)
    _location_cache[key] = out
    return out


def standardise_global(maps: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    return (maps - normal.mean()) / normal.std().clamp_min(1e-12)


def standardise_cell(maps: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    mean = normal.mean(0, keepdim=True)
    std = normal.std(0, keepdim=True)
    return (maps - mean) / std.clamp_min(1e-3 * float(std.mean()) + 1e-12)


def absmean(maps: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """The package's reconstruction head: |map - normal mean map|."""
    return (maps - normal.mean(0, keepdim=True)).abs()


class Evaluator:
    """Protocol parts as image sets, the score pipeline, and metrics."""

    def __init__(self, cache: Cache, size, grid: tuple[int, int], reduce: int = 1):
        self.cache = cache
        self.reduce = reduce
        """Pixel metrics on maps and masks at 1/reduce of the input size (exploration: 2, final figures: 1)."""
        self.width, self.height = size[0] // reduce, size[1] // reduce
        self.grid = grid
        self.kernel = gaussian_kernel(1.0)

    def grid_of(self, part: str, layers: list[str], grid: tuple[int, int] | None = None) -> torch.Tensor:
        grid = grid or self.grid
        if part == "probe":
            holdout = self.cache.train.grid(layers, grid, self.cache.train_index("holdout"))
            return torch.cat([holdout, self.cache.probe.grid(layers, grid)])
        return self.cache.test.grid(layers, grid, self.cache.test_index(part))

    def labels_of(self, part: str) -> tuple[list[str], np.ndarray]:
        if part == "probe":
            n = len(self.cache.train_index("holdout"))
            r = self.reduce
            return ["good"] * n + ["synthetic"] * len(self.cache.probe.images), np.concatenate(
                [np.zeros((n, self.height, self.width), bool), self.cache.probe.masks[:, ::r, ::r]])
        index = self.cache.test_index(part)
        return self.cache.test_types(index).tolist(), self.cache.test.masks[index][:, :: self.reduce, :: self.reduce]

    def finish(self, grid_maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 1, gh, gw) -> ((N, H, W) maps, (N,) top-1 % scores, (N,) max scores), as ``AnomalyScorer.refine``
        + ``score``."""
        maps = upsample_bilinear(blur(grid_maps.float(), self.kernel), (self.height, self.width))
        flat = maps.flatten(1)
        k = topk_count(self.height, self.width, TOPK)
        scores = torch.topk(flat, k, dim=1, sorted=False).values.mean(1)
        return maps[:, 0].numpy(), scores.numpy(), flat.amax(1).numpy()

    def variants(self, raw: dict[str, dict[str, torch.Tensor]], measures: list[str] | None = None,
                 weights: tuple[float, ...] = (1.0,)) -> dict[str, dict[str, torch.Tensor]]:
        """Scoring variant name -> part -> (N, 1, gh, gw) map, each normal statistic from the holdout only.

        Maps named in LOCATION_HEADS are location heads; the others reconstruction measures. Each measure is normalised
        'absmean' (the package's |map - mean map|) or 'cell' (per-cell z-score); fused maps add every location head's
        map and the reconstruction map, each z-scored over all holdout cells, the reconstruction weighted by w.
        """
        parts = list(raw)
        normal = raw["holdout"]
        locs = [m for m in normal if m in LOCATION_HEADS]
        out: dict[str, dict[str, torch.Tensor]] = {loc: {p: raw[p][loc] for p in parts} for loc in locs}
        loc_z = {loc: {p: standardise_global(raw[p][loc], normal[loc]) for p in parts} for loc in locs}
        for measure in measures or [m for m in normal if m not in LOCATION_HEADS]:
            for norm_name, norm in (("absmean", absmean), ("cell", standardise_cell)):
                rec = {p: norm(raw[p][measure], normal[measure]) for p in parts}
                out[f"rec:{measure}:{norm_name}"] = rec
                rec_z = {p: standardise_global(rec[p], rec["holdout"]) for p in parts}
                for loc in locs:
                    for w in weights:
                        out[f"fused:{loc}+{measure}:{norm_name}:w{w:g}"] = {p: loc_z[loc][p] + w * rec_z[p]
                                                                         for p in parts}
        return out

    def evaluate(self, part: str, grid_maps: torch.Tensor, holdout_maps: torch.Tensor) -> dict:
        types, masks = self.labels_of(part)
        maps, scores, max_scores = self.finish(grid_maps)
        normal_maps, normal_scores, _ = self.finish(holdout_maps)
        pixel_threshold = quantile_threshold(normal_maps[:, ::4, ::4], PIXEL_FPR)
        image_threshold = quantile_threshold(normal_scores, 0.01)
        res = evaluate_scores({"topk": scores, "max": max_scores}, types, maps, masks, image_threshold, pixel_threshold)
        overall = res.pop("overall")
        keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_f1")
        type_mean = {k: float(np.mean([r[k] for r in res.values()])) for k in keys if k in overall}
        return {**overall, "type_mean": type_mean, "per_type": res}
