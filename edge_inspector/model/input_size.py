"""The model input size chosen from the training images: their median aspect ratio within a pixel budget.

Stretching elongated parts to a square squeezes thin defects (issue 18: on 1:2.5 parts, image AUROC 0.765 at
256x256 against 0.851 with the aspect ratio kept). ``choose_input_size`` keeps the median aspect ratio of the
training images, aims at ``model.input_pixels`` (256x256's area by default) and rounds each side to one the network
accepts (``ModelSpec.fits``: a multiple of the coarsest backbone stride whose feature grid the halo blocks tile).
Sides the user set (``model.width`` / ``model.height`` in ``--config`` or overrides) are kept as given.

Pure: it sees image sizes, never pixels (``edge_inspector.data.image_sizes`` reads them from the file headers).

>>> from edge_inspector.model.presets import ModelSpec
>>> choice = choose_input_size([(200, 500)] * 3, ModelSpec())
>>> choice.width, choice.height
(192, 448)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from edge_inspector.config import load_model
from edge_inspector.errors import ConfigError
from edge_inspector.model.presets import ModelSpec, Preset

REFERENCE_PIXELS = 256 * 256
"""The square input the presets were designed at; costs are quoted against it."""
BUDGET_TOLERANCE = math.sqrt(2)
"""The area may miss the budget by this factor either way: sides step in coarse multiples (64 px for haloae-lite),
and within that band the parts' shape comes first."""
ORIENTATION_TOLERANCE = 1.1
"""Images within 10 % of square count as neither portrait nor landscape."""
MIXED_ORIENTATION_SHARE = 0.1
"""Warn when at least this share of the images lies each way (portrait and landscape)."""
ASPECT_SPREAD_WARNING = 1.5
"""Warn when the 90th percentile aspect ratio exceeds the 10th by this factor."""
SCALE_SPREAD_WARNING = 2.0
"""Warn when the 90th percentile side length (square root of the area) exceeds the 10th by this factor."""
MAX_SIDE = 16384
"""No input side beyond this is considered."""
STRETCH_WARNING = 1.25
"""Warn when a user-set size stretches the median image by more than this factor."""

SizeSource = Literal["auto", "width set", "height set", "config"]


@dataclass(frozen=True)
class SizeStatistics:
    """What the training images' sizes look like (aspect = height / width)."""

    count: int
    median_width: float
    median_height: float
    median_aspect: float
    aspect_p10: float
    aspect_p90: float
    portrait_share: float
    landscape_share: float
    scale_spread: float
    """90th over 10th percentile of the side length (square root of the area)."""
    width_range: tuple[int, int]
    height_range: tuple[int, int]

    @classmethod
    def of(cls, sizes: Sequence[tuple[int, int]]) -> SizeStatistics:
        """Statistics of (width, height) pairs.

        Raises:
            ConfigError: no sizes, or a side that is not positive.
        """
        if len(sizes) == 0:
            raise ConfigError("cannot choose an input size from no images")
        wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
        if (wh <= 0).any():
            raise ConfigError(f"image sizes must be positive, got {wh[(wh <= 0).any(axis=1)][0].tolist()}")
        aspect = wh[:, 1] / wh[:, 0]
        side = np.sqrt(wh[:, 0] * wh[:, 1])
        p10, p90 = np.percentile(aspect, [10, 90])
        s10, s90 = np.percentile(side, [10, 90])
        return cls(
            count=len(wh),
            median_width=float(np.median(wh[:, 0])),
            median_height=float(np.median(wh[:, 1])),
            median_aspect=float(np.median(aspect)),
            aspect_p10=float(p10),
            aspect_p90=float(p90),
            portrait_share=float(np.mean(aspect > ORIENTATION_TOLERANCE)),
            landscape_share=float(np.mean(aspect < 1 / ORIENTATION_TOLERANCE)),
            scale_spread=float(s90 / s10),
            width_range=(int(wh[:, 0].min()), int(wh[:, 0].max())),
            height_range=(int(wh[:, 1].min()), int(wh[:, 1].max())),
        )

    def describe(self) -> str:
        """One line for a person."""
        (w0, w1), (h0, h1) = self.width_range, self.height_range
        return (f"{self.count} training image{'s' if self.count > 1 else ''}, {w0}-{w1} px wide, {h0}-{h1} px high (median "
                f"{self.median_width:.0f}x{self.median_height:.0f}); aspect h/w median {self.median_aspect:.2f}, "
                f"10-90 % {self.aspect_p10:.2f}-{self.aspect_p90:.2f}; {self.portrait_share:.0%} portrait, "
                f"{self.landscape_share:.0%} landscape")


@dataclass(frozen=True)
class InputSizeChoice:
    """The model input size, where it came from and why."""

    width: int
    height: int
    source: SizeSource
    """auto: both sides derived; 'width set' / 'height set': the other side derived; config: both set by the user."""
    reason: str
    warnings: tuple[str, ...]
    statistics: SizeStatistics
    pixel_budget: int

    @property
    def cost(self) -> float:
        """Pixels per image against 256x256: training and inference time grow roughly in proportion."""
        return self.width * self.height / REFERENCE_PIXELS

    def summary(self) -> str:
        """Lines for a person: the size, the statistics seen, why, the cost and any warnings."""
        lines = [f"input       {self.width}x{self.height} ({self.source}): {self.reason}",
                 f"images      {self.statistics.describe()}"]
        if not math.isclose(self.cost, 1.0):
            lines.append(f"cost        {self.cost:.2f}x the pixels of 256x256: training and inference take roughly "
                         f"{self.cost:.2f}x as long per image")
        lines += [f"warning     {w}" for w in self.warnings]
        return "\n".join(lines)

    def record(self) -> dict:
        """JSON-ready record of why (the manifest's ``training.input_size``; the size itself is the input spec)."""
        stats = asdict(self.statistics)
        stats = {k: list(v) if isinstance(v, tuple) else round(v, 4) if isinstance(v, float) else v
                 for k, v in stats.items()}
        return {"source": self.source, "reason": self.reason, "pixel_budget": self.pixel_budget,
                "warnings": list(self.warnings), "image_sizes": stats}


def choose_input_size(
    sizes: Sequence[tuple[int, int]], spec: ModelSpec, fixed: Collection[str] = ()
) -> InputSizeChoice:
    """The input size for images of these (width, height) sizes.

    Args:
        sizes: (width, height) of every training image, as the model will see them (orientation applied).
        spec: the model layout: which sides fit, the pixel budget ``input_pixels``, the resize mode, and the values
            of any fixed side.
        fixed: the sides the user set ('width', 'height'); their values in ``spec`` are kept.

    Raises:
        ConfigError: no sizes, a side that is not positive, or a model layout no side up to MAX_SIDE fits.
    """
    unknown = set(fixed) - {"width", "height"}
    if unknown:
        raise ConfigError(f"fixed sides must be 'width' or 'height', got {sorted(unknown)}")
    stats = SizeStatistics.of(sizes)
    aspect = stats.median_aspect
    if {"width", "height"} <= set(fixed):
        width, height, source = spec.width, spec.height, "config"
        reason = "model.width and model.height as set (config or overrides)"
    elif "width" in fixed:
        width, height, source = spec.width, _nearest_side(spec, spec.width * aspect), "width set"
        reason = f"model.width as set; height from the median aspect ({spec.width} x {aspect:.2f} = " \
                 f"{spec.width * aspect:.0f}, rounded to a side that fits)"
    elif "height" in fixed:
        width, height, source = _nearest_side(spec, spec.height / aspect), spec.height, "height set"
        reason = f"model.height as set; width from the median aspect ({spec.height} / {aspect:.2f} = " \
                 f"{spec.height / aspect:.0f}, rounded to a side that fits)"
    else:
        width, height = _best_pair(spec, aspect)
        source = "auto"
        reason = _auto_reason(spec, aspect, width, height)
    return InputSizeChoice(width, height, source, reason, tuple(_warnings(stats, spec, width, height)), stats,
                           spec.input_pixels)


def sides_set(spec: ModelSpec) -> set[str]:
    """The sides ('width', 'height') a preset file or override set; the built-in presets leave both to the data."""
    return {"width", "height"} & spec.model_fields_set


def with_input_size(preset: Preset, choice: InputSizeChoice) -> Preset:
    """``preset`` at the chosen width x height (validated again, so the checkpoint records the size trained)."""
    data = preset.model_dump(mode="json")
    data["model"].update(width=choice.width, height=choice.height)
    return load_model(Preset, data, f"preset {preset.name} at the chosen input size {choice.width}x{choice.height}")


def _fitting_sides(spec: ModelSpec, up_to: float) -> list[int]:
    """Every side that fits, up to ``up_to`` pixels (and at least the smallest that fits).

    Raises:
        ConfigError: no side up to MAX_SIDE fits this model layout.
    """
    sides = []
    for side in range(spec.size_step(), MAX_SIDE + 1, spec.size_step()):
        if side > up_to and sides:
            break
        if spec.fits(side):
            sides.append(side)
    if not sides:
        raise ConfigError(f"no input side up to {MAX_SIDE} px fits this model layout (stride {spec.size_step()}, "
                          f"{spec.grid_stride}-px grid cells in {spec.block}-cell blocks)")
    return sides


def _nearest_side(spec: ModelSpec, ideal: float) -> int:
    """The fitting side closest to ``ideal`` in ratio (the smaller one on a tie)."""
    return min(_fitting_sides(spec, 2 * ideal), key=lambda s: (abs(math.log(s / ideal)), s))


def _best_pair(spec: ModelSpec, aspect: float) -> tuple[int, int]:
    """(width, height) among fitting sides: the closest to ``aspect`` whose area is within BUDGET_TOLERANCE of the
    budget (if none is, the closest in area), then the closest to the budget."""
    budget = spec.input_pixels
    # A pair in the band whose long side passes this bound is over 4x off the aspect: never the best.
    sides = _fitting_sides(spec, 2 * BUDGET_TOLERANCE * math.sqrt(budget * max(aspect, 1 / aspect)))

    def miss(pair: tuple[int, int]) -> tuple[float, float, float]:
        w, h = pair
        area_miss = abs(math.log(w * h / budget))
        return max(0.0, area_miss - math.log(BUDGET_TOLERANCE)), abs(math.log(h / w / aspect)), area_miss

    return min(((w, h) for w in sides for h in sides), key=miss)


def _auto_reason(spec: ModelSpec, aspect: float, width: int, height: int) -> str:
    budget = spec.input_pixels
    ratio = width * height / budget
    within = (f"closest to that aspect within {BUDGET_TOLERANCE:.2f}x of the budget"
              if abs(math.log(ratio)) <= math.log(BUDGET_TOLERANCE) + 1e-9
              else f"none within {BUDGET_TOLERANCE:.2f}x of the budget, so the closest in area")
    return (f"median aspect {aspect:.2f} at a budget of {budget} px (model.input_pixels) is "
            f"{math.sqrt(budget / aspect):.0f}x{math.sqrt(budget * aspect):.0f}; of the sides that fit "
            f"{_fitting_rule(spec)}, {within}: aspect {height / width:.2f} at {ratio:.2f}x the budget")


def _fitting_rule(spec: ModelSpec) -> str:
    """Which sides fit, in words: the first few, e.g. '(64, 128, 192, 256, ...)'."""
    first = spec.sizes_that_fit(1, count=5)
    return (f"(stride {spec.size_step()}, {spec.grid_stride}-px grid cells in {spec.block}-cell halo blocks: "
            f"{', '.join(map(str, first))}, ...)")


def _warnings(stats: SizeStatistics, spec: ModelSpec, width: int, height: int) -> list[str]:
    """Orientation, aspect and scale spread, and a user size that distorts the parts; each says what to do."""
    letterbox = spec.resize == "letterbox"
    suggest = "" if letterbox else "; model.resize=letterbox keeps every part's proportions (padding the rest)"
    out = []
    if min(stats.portrait_share, stats.landscape_share) >= MIXED_ORIENTATION_SHARE:
        effect = "pads one kind heavily" if letterbox else "stretches one kind or the other"
        out.append(f"mixed orientations ({stats.portrait_share:.0%} portrait, {stats.landscape_share:.0%} "
                   f"landscape): one input shape {effect}; turn the parts one way (roi.rotation_deg on the line, "
                   f"and in the training images){suggest}")
    if not letterbox and stats.aspect_p90 / stats.aspect_p10 > ASPECT_SPREAD_WARNING:
        worst = max(height / width / stats.aspect_p10, stats.aspect_p90 * width / height)
        out.append(f"aspect ratios vary (h/w {stats.aspect_p10:.2f} to {stats.aspect_p90:.2f} for the middle "
                   f"80 %): at {width}x{height} the extremes are stretched up to {worst:.2f}x{suggest}")
    if stats.scale_spread > SCALE_SPREAD_WARNING:
        out.append(f"image sizes vary ({stats.scale_spread:.1f}x in side length for the middle 80 %): parts reach "
                   f"the model at different scales; crop them to a fixed field of view if you can{suggest}")
    stretch = (height / width) / stats.median_aspect
    if not letterbox and max(stretch, 1 / stretch) > STRETCH_WARNING:
        out.append(f"{width}x{height} (aspect {height / width:.2f}) stretches the median image (aspect "
                   f"{stats.median_aspect:.2f}) {max(stretch, 1 / stretch):.2f}x; leave model.width and "
                   "model.height unset to keep the parts' proportions")
    return out
