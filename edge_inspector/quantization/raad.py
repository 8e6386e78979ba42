"""RAAD's hierarchy, measured: how sharp each attention block's attention is, and how much quantization bends it, on
normal images and on defect regions.

RAAD (Chen et al., arXiv 2412.08189) claims that lower layers are coarse and noisy (compress them) while deeper
layers are sharp and defect-focused (keep them). HaloAE has real attention, so the claim can be checked per block:

* ``entropy``: mean Shannon entropy (nats) of the FP32 attention rows; low = sharp. Normal images (every query
  cell) and defect regions (query cells mostly inside a synthetic defect's mask);
* ``kl``: mean KL(FP32 row || quantized row) (nats), same two regions: how much the plan bends the attention.

The quantized rows are the softmax outputs of the quantized model (integer QK^T from quantized projections),
before their own 8-bit rounding for AV (a rounded row has exact zeros, where KL is undefined).

A row is a query cell; HaloAttention's (B*heads, blocks, Q, K) rows are put back on the map (``merge_blocks``) and
averaged over heads, so they can be matched with the masks brought to the block's grid.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.model.attention import merge_blocks
from edge_inspector.quantization.attention_quant import attention_quants
from edge_inspector.quantization.units import QuantUnit, apply_plan, set_mode

DEFECT_CELL_FRACTION = 0.25
"""A query cell counts as defect region when at least this share of its pixels is inside the mask (thin scars
never fill half a cell of an 8-pixel grid)."""
EPS = 1e-12


def row_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of every row (last axis) of probabilities ``p``."""
    return -(p * torch.log(p.clamp(min=EPS))).sum(-1)


def row_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) (nats) of every row; terms where ``p`` is 0 count 0."""
    return (p * (torch.log(p.clamp(min=EPS)) - torch.log(q.clamp(min=EPS)))).sum(-1)


def rows_to_cells(block: nn.Module, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-row values of a block's attention -> (B, H, W) on the block's input grid, mean over heads.

    Args:
        rows: HaloAttention's (B*heads, blocks, Q) or any (B*heads, H*W) in row-major cell order.
        shape: the block's input shape (B, C, H, W).
    """
    b, _, h, w = shape
    per_image = rows.reshape(b, -1, h * w).mean(1)
    size = getattr(block, "block", None)
    if size is None or rows.dim() != 3:
        return per_image.reshape(b, h, w)
    return merge_blocks(per_image.reshape(b, -1, size * size), h, w, size)


@contextmanager
def capturing(model: nn.Module):
    """While open, every attention block with an ``AttentionQuant`` hands its probabilities to the yielded dict
    (block name -> (probabilities, input shape), the last forward's)."""
    seen: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
    quants = attention_quants(model)
    names = {id(model.get_submodule(name)): name for name in quants}
    for quant in quants.values():
        quant.capture = lambda block, p, shape: seen.__setitem__(names[id(block)], (p, shape))
    try:
        yield seen
    finally:
        for quant in quants.values():
            quant.capture = None


@dataclass
class BlockAttention:
    """RAAD's measures for one attention block (see the module docstring)."""

    depth: int
    block: str
    entropy_normal: float
    entropy_defect: float
    kl_normal: float
    kl_defect: float
    max_entropy: float
    """log(keys per row): the entropy of a uniform row."""

    def to_dict(self) -> dict:
        return asdict(self)


class _Sums:
    """Running sums of per-cell values over the normal cells and the defect cells."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def add(self, key: str, cells: torch.Tensor, where: torch.Tensor) -> None:
        self.total[key] += float(cells[where].sum())
        self.count[key] += int(where.sum())

    def mean(self, key: str) -> float:
        return self.total[key] / self.count[key] if self.count[key] else float("nan")


@torch.no_grad()
def attention_table(scorer: nn.Module, units: list[QuantUnit], images: np.ndarray, masks: np.ndarray,
                    labels: np.ndarray, plan: dict[str, str], batch_size: int = 8) -> list[BlockAttention]:
    """RAAD's measures for every attention block of ``scorer`` (prepared for quantization) under ``plan``.

    Args:
        images: uint8 (N, H, W, 3) probe images; ``labels`` 0 normal / 1 defect, ``masks`` bool (N, H, W).
        plan: the bit plan whose attention is compared with FP32's.
    """
    blocks = list(attention_quants(scorer))
    sums = {name: _Sums() for name in blocks}
    keys: dict[str, int] = {}
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        fp32, quantized = _probabilities(scorer, units, batch, {}), _probabilities(scorer, units, batch, plan)
        normal = torch.from_numpy(labels[start : start + batch_size] == 0)
        mask = torch.from_numpy(masks[start : start + batch_size]).float()[:, None]
        for name in blocks:
            p, shape = fp32[name]
            q, _ = quantized[name]
            keys[name] = p.shape[-1]
            block = scorer.get_submodule(name)
            entropy = rows_to_cells(block, row_entropy(p), shape)
            kl = rows_to_cells(block, row_kl(p, q), shape)
            defect = (F.adaptive_avg_pool2d(mask, shape[-2:])[:, 0] >= DEFECT_CELL_FRACTION) & ~normal[:, None, None]
            everywhere = normal[:, None, None].expand_as(entropy)
            for key, cells in (("entropy", entropy), ("kl", kl)):
                sums[name].add(f"{key}_normal", cells, everywhere)
                sums[name].add(f"{key}_defect", cells, defect)
    return [BlockAttention(depth, name, *(sums[name].mean(k) for k in
                                          ("entropy_normal", "entropy_defect", "kl_normal", "kl_defect")),
                           float(np.log(keys[name])))
            for depth, name in enumerate(blocks)]


def _probabilities(scorer: nn.Module, units: list[QuantUnit], batch: torch.Tensor,
                   plan: dict[str, str]) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    apply_plan(scorer, units, plan)
    set_mode(scorer, "quant")
    with capturing(scorer) as seen:
        scorer(batch)
    return dict(seen)
