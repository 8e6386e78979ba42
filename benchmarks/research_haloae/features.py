"""Cached Lite0 features (``cache.py``) -> the grids the auto-encoder and the location head read, per protocol part."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cache import WORK
from protocol import load_split

STAGE_CHANNELS = {"stage2": 24, "stage3": 40, "stage4": 80, "stage5": 112, "stage6": 192}


def to_grid(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool finer maps, bilinearly resize coarser ones to ``grid`` (the package's ``_to_grid``)."""
    gh, gw = grid
    out = []
    for fmap in maps:
        h, w = fmap.shape[-2:]
        if (h, w) == (gh, gw):
            out.append(fmap)
        elif h > gh:
            out.append(F.avg_pool2d(fmap, (h // gh, w // gw)))
        else:
            out.append(F.interpolate(fmap, size=(gh, gw), mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1)


@dataclass
class FeatureSet:
    """One cached set: images, per-layer maps (float16), optional masks / paths / sources."""

    images: np.ndarray
    maps: dict[str, np.ndarray]
    masks: np.ndarray | None = None
    paths: np.ndarray | None = None
    source: np.ndarray | None = None

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        z = np.load(path)
        maps = {k[2:]: z[k] for k in z.files if k.startswith("f_")}
        get = lambda k: z[k] if k in z.files else None  # noqa: E731
        return cls(z["images"], maps, get("masks"), get("paths"), get("source"))

    def grid(self, layers: list[str], grid: tuple[int, int], index: np.ndarray | None = None,
             batch: int = 64) -> torch.Tensor:
        """(N, C, gh, gw) float32 grid of ``layers`` for rows ``index`` (default all)."""
        index = np.arange(len(self.images)) if index is None else index
        parts = []
        for start in range(0, len(index), batch):
            rows = index[start : start + batch]
            parts.append(to_grid([torch.from_numpy(self.maps[name][rows]).float() for name in layers], grid))
        return torch.cat(parts)


class Cache:
    """Every cached set of one input size, split by the protocol."""

    def __init__(self, width: int = 256, height: int = 256):
        self.width, self.height = width, height
        self.folder = WORK / f"{width}x{height}"
        self.split = load_split()

    @cached_property
    def train(self) -> FeatureSet:
        return FeatureSet.load(self.folder / "train.npz")

    @cached_property
    def test(self) -> FeatureSet:
        return FeatureSet.load(self.folder / "test.npz")

    @cached_property
    def probe(self) -> FeatureSet:
        return FeatureSet.load(self.folder / "probe.npz")

    @cached_property
    def corrupt(self) -> FeatureSet:
        return FeatureSet.load(self.folder / "corrupt.npz")

    def train_index(self, part: str) -> np.ndarray:
        """Rows of ``train`` in the protocol part 'fit' or 'holdout'."""
        where = {p: i for i, p in enumerate(self.train.paths.tolist())}
        return np.array(sorted(where[p] for p in self.split[part]))

    def test_index(self, part: str) -> np.ndarray:
        """Rows of ``test`` in 'validation', 'test_rest' or 'full'."""
        paths = self.test.paths.tolist()
        if part == "full":
            return np.arange(len(paths))
        keep = set(self.split[part])
        return np.array([i for i, p in enumerate(paths) if p in keep])

    def test_types(self, index: np.ndarray) -> np.ndarray:
        return np.array([p.split("/")[1] for p in self.test.paths[index]])
