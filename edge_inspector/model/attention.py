"""Local block + halo self-attention (HaloNet), written so it exports cleanly to ONNX and TensorRT.

The map is cut into non-overlapping ``block x block`` query blocks; each attends to the ``window x window`` keys
around it (``window = block + 2 * halo``). Rules followed so that ONNX Runtime and TensorRT run it as torch does:
q/k/v are 1x1 convs on the whole map (no bias, so identical to projecting each window); windows come from pad +
slice + reshape + concat (no unfold, no einsum); relative-position logits come from index tables built once; keys in the zero padding get a finite
additive mask of -1e4 (the *correct* mask: padding is excluded, valid keys are kept); softmax runs in fp32; no
tensor has more than five dimensions; every shape is static.

``BlockMeanAttention`` reproduces what the official HaloAE code's attention actually computes because its mask is
inverted (interior blocks: the plain mean of v over the window; border blocks: the output bias only). It exists
for the ablation that tells whether real attention helps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -1e4
"""Finite, so it stays finite in fp16 (-finfo.max would become -inf and NaN the softmax)."""


def check_tiling(height: int, width: int, block: int, halo: int) -> None:
    """Raise ValueError unless a (height, width) map can be tiled by ``block`` with this ``halo``."""
    if height % block or width % block:
        raise ValueError(f"a {height}x{width} map is not tiled by {block}x{block} blocks")
    if not 0 <= 2 * halo <= block:
        raise ValueError(f"halo {halo} must be between 0 and block/2 ({block // 2})")


def relative_index(block: int, halo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tables (Q, window) into the (block + window - 1)-row relative embeddings: rows and columns.

    Query q sits at (qy, qx) inside its block, key row ky (column kx) inside the window, which starts ``halo``
    before the block. The offset ``(ky - halo) - qy`` lies in [-(block + halo - 1), block + halo - 1]; adding
    ``block + halo - 1`` makes it an index.
    """
    window = block + 2 * halo
    qy, qx = torch.meshgrid(torch.arange(block), torch.arange(block), indexing="ij")
    k = torch.arange(window).reshape(1, -1)
    shift = block - 1
    rows = k - qy.reshape(-1, 1) + shift
    cols = k - qx.reshape(-1, 1) + shift
    return rows, cols


def padding_mask(height: int, width: int, block: int, halo: int) -> torch.Tensor:
    """(num_blocks, K) additive mask: 0 for keys inside the map, MASK_VALUE for keys in the zero padding."""
    window = block + 2 * halo
    by, bx = torch.meshgrid(torch.arange(height // block), torch.arange(width // block), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y = by.reshape(-1, 1) * block - halo + ky.reshape(1, -1)
    x = bx.reshape(-1, 1) * block - halo + kx.reshape(1, -1)
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return torch.where(inside, 0.0, MASK_VALUE)


def _windows_1d(t: torch.Tensor, size: int, block: int, halo: int) -> torch.Tensor:
    """(N, S_pad, M) padded along dim 1 -> (N, S/block, window, M) overlapping windows, by reshape + slice + concat.

    ``t`` is padded with ``halo`` before and ``max(halo, block - halo)`` after, so the second shifted view exists.
    """
    n, _, m = t.shape
    nb = size // block
    main = t[:, :size].reshape(n, nb, block, m)
    if halo == 0:
        return main
    tail = t[:, block : size + block].reshape(n, nb, block, m)[:, :, : 2 * halo]
    return torch.cat([main, tail], dim=2)


def extract_windows(x: torch.Tensor, block: int, halo: int) -> torch.Tensor:
    """(N, H, W) -> (N, nbh * nbw, window * window) key windows with zero padding outside the map."""
    n, h, w = x.shape
    after = max(halo, block - halo)
    xp = F.pad(x, [halo, after, halo, after])
    window = block + 2 * halo
    nbh, nbw = h // block, w // block
    rows = _windows_1d(xp, h, block, halo)  # (N, nbh, window, Wp)
    cols = _windows_1d(rows.reshape(n * nbh * window, xp.shape[2], 1), w, block, halo)  # (N*nbh*window, nbw, window, 1)
    cols = cols.reshape(n, nbh, window, nbw, window).permute(0, 1, 3, 2, 4)
    return cols.reshape(n, nbh * nbw, window * window)


def extract_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(N, H, W) -> (N, nbh * nbw, block * block) non-overlapping query blocks."""
    n, h, w = x.shape
    nbh, nbw = h // block, w // block
    return x.reshape(n, nbh, block, nbw, block).permute(0, 1, 3, 2, 4).reshape(n, nbh * nbw, block * block)


def merge_blocks(x: torch.Tensor, height: int, width: int, block: int) -> torch.Tensor:
    """Inverse of ``extract_blocks``: (N, nbh * nbw, block * block) -> (N, H, W)."""
    n = x.shape[0]
    nbh, nbw = height // block, width // block
    return x.reshape(n, nbh, nbw, block, block).permute(0, 1, 3, 2, 4).reshape(n, height, width)


class HaloAttention(nn.Module):
    """Multi-head block + halo self-attention with relative positions and the correct padding mask.

    Args:
        channels: input and output channels.
        heads: number of heads.
        head_dim: width of each head.
        block: query block side; the map's height and width must be multiples of it.
        halo: key border around each block (``2 * halo <= block``).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, block: int, halo: int):
        super().__init__()
        if not 0 <= 2 * halo <= block:
            raise ValueError(f"halo {halo} must be between 0 and block/2 ({block // 2})")
        self.heads, self.head_dim, self.block, self.halo = heads, head_dim, block, halo
        inner = heads * head_dim
        self.to_q = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_k = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_v = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, channels, 1)
        window = block + 2 * halo
        scale = head_dim**-0.5
        self.rel_height = nn.Parameter(torch.randn(block + window - 1, head_dim) * scale)
        self.rel_width = nn.Parameter(torch.randn(block + window - 1, head_dim) * scale)
        rows, cols = relative_index(block, halo)
        self.register_buffer("rel_rows", rows, persistent=False)
        self.register_buffer("rel_cols", cols, persistent=False)
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def _mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width)
        if key not in self._masks:
            self._masks[key] = padding_mask(height, width, self.block, self.halo)
        return self._masks[key].to(device)

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights (B*heads, blocks, Q, K) and the values (B*heads, blocks, K, head_dim)."""
        b, _, h, w = x.shape
        check_tiling(int(h), int(w), self.block, self.halo)
        nh, d = self.heads, self.head_dim
        q = self.to_q(x) * d**-0.5
        q = extract_blocks(q.reshape(b * nh * d, h, w), self.block)  # (B*nh*d, NB, Q)
        k = extract_windows(self.to_k(x).reshape(b * nh * d, h, w), self.block, self.halo)  # (B*nh*d, NB, K)
        v = extract_windows(self.to_v(x).reshape(b * nh * d, h, w), self.block, self.halo)
        nb, nq, nk = q.shape[1], q.shape[2], k.shape[2]
        q = q.reshape(b * nh, d, nb, nq).permute(0, 2, 3, 1)  # (B*nh, NB, Q, d)
        k = k.reshape(b * nh, d, nb, nk).permute(0, 2, 1, 3)  # (B*nh, NB, d, K)
        v = v.reshape(b * nh, d, nb, nk).permute(0, 2, 3, 1)  # (B*nh, NB, K, d)

        logits = torch.matmul(q, k)  # (B*nh, NB, Q, K)
        # Relative positions: q . (r_h[dy] + r_w[dx]) = (q . r_h)[dy] + (q . r_w)[dx]; score every offset once,
        # then pick each key row's / column's offset from the index tables (GatherElements) and broadcast-add.
        window = self.rel_rows.shape[1]
        shape = (b * nh, nb, nq, window)
        by_row = torch.gather(torch.matmul(q, self.rel_height.t()), 3, self.rel_rows.expand(shape))
        by_col = torch.gather(torch.matmul(q, self.rel_width.t()), 3, self.rel_cols.expand(shape))
        rel = by_row.unsqueeze(4) + by_col.unsqueeze(3)  # (B*nh, NB, Q, window, window)
        logits = logits + rel.reshape(b * nh, nb, nq, nk)
        logits = logits + self._mask(int(h), int(w), x.device).reshape(1, nb, 1, nk)
        return torch.softmax(logits.float(), dim=-1).to(v.dtype), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        attn, v = self.weights(x)
        out = torch.matmul(attn, v)  # (B*nh, NB, Q, d)
        nb, nq = attn.shape[1], attn.shape[2]
        out = out.permute(0, 3, 1, 2).reshape(b * self.heads * self.head_dim, nb, nq)
        out = merge_blocks(out, int(h), int(w), self.block).reshape(b, self.heads * self.head_dim, h, w)
        return self.to_out(out)


class BlockMeanAttention(nn.Module):
    """What the official HaloAE attention computes (inverted mask): an ablation, not attention.

    Interior blocks: every query gets the mean of v over its window (avg-pool ``window`` / stride ``block``), then
    the output 1x1 conv. Border blocks (whose window touches the padding) get only the output conv's bias.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, block: int, halo: int):
        super().__init__()
        self.block, self.halo = block, halo
        inner = heads * head_dim
        self.to_v = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        check_tiling(int(h), int(w), self.block, self.halo)
        window = self.block + 2 * self.halo
        pooled = F.avg_pool2d(self.to_v(x), window, stride=self.block, padding=self.halo, count_include_pad=True)
        nbh, nbw = int(h) // self.block, int(w) // self.block
        interior = torch.zeros(1, 1, nbh, nbw, dtype=x.dtype, device=x.device)
        if self.halo == 0:
            interior += 1
        else:
            interior[:, :, 1:-1, 1:-1] = 1
        pooled = F.interpolate(pooled * interior, size=(int(h), int(w)), mode="nearest")
        return self.to_out(pooled)


def make_attention(kind: str, channels: int, heads: int, head_dim: int, block: int, halo: int) -> nn.Module:
    """'halo' (correct attention) or 'block_mean' (the official code's behaviour)."""
    cls = {"halo": HaloAttention, "block_mean": BlockMeanAttention}[kind]
    return cls(channels, heads, head_dim, block, halo)
