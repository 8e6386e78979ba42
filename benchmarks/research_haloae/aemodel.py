"""The auto-encoder variants of the issue 13 ablations, on cached feature grids (no backbone inside).

Same block as the package (``model/haloae.py``: 1x1 reduce -> local attention -> ReLU -> k x k conv -> BN, residual,
ReLU), with switches for what the issue asks to test:

- ``attention``: 'halo' (the package's), 'block_mean' (the official code's effective layer), 'none' (conv AE);
- ``neighbour``: UniAD's neighbour masking: each query may not attend to keys within this many cells of itself
  (0 = off); ``masked_residual`` drops the block's identity shortcut where masking is on (else the shortcut carries
  the query's own feature around the masked attention);
- ``bn_reduce``: BN after the 1x1 reduce conv (the official block has it);
- ``coords``: two coordinate channels (y, x in [-1, 1]) concatenated to the stem input and to the latent;
- ``global_width``: a separate global auto-encoder (strided convs to a ``global_width`` vector and back, EfficientAD
  style) whose reconstruction is a second map, for broad low-contrast defects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.model.attention import MASK_VALUE, BlockMeanAttention, HaloAttention


def neighbour_mask(block: int, halo: int, radius: int) -> torch.Tensor:
    """(Q, K) additive mask: MASK_VALUE where the key lies within ``radius`` cells (Chebyshev) of the query."""
    window = block + 2 * halo
    qy, qx = torch.meshgrid(torch.arange(block), torch.arange(block), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(window) - halo, torch.arange(window) - halo, indexing="ij")
    dy = (ky.reshape(1, -1) - qy.reshape(-1, 1)).abs()
    dx = (kx.reshape(1, -1) - qx.reshape(-1, 1)).abs()
    return torch.where((dy <= radius) & (dx <= radius), MASK_VALUE, 0.0)


class MaskedHaloAttention(HaloAttention):
    """HaloAttention whose logits also get a fixed (Q, K) neighbour mask."""

    def __init__(self, channels, heads, head_dim, block, halo, radius):
        super().__init__(channels, heads, head_dim, block, halo)
        self.register_buffer("neighbour", neighbour_mask(block, halo, radius), persistent=False)

    def weights(self, x):
        # same as HaloAttention.weights with the (Q, K) mask added before the softmax
        attn_logits, v = self._logits(x)
        attn_logits = attn_logits + self.neighbour.reshape(1, 1, *self.neighbour.shape)
        return torch.softmax(attn_logits, dim=-1), v

    def _logits(self, x):
        from edge_inspector.model.attention import extract_blocks, extract_windows

        b, _, h, w = x.shape
        nh, d = self.heads, self.head_dim
        q = self.to_q(x) * d**-0.5
        q = extract_blocks(q.reshape(b * nh * d, h, w), self.block)
        k = extract_windows(self.to_k(x).reshape(b * nh * d, h, w), self.block, self.halo)
        v = extract_windows(self.to_v(x).reshape(b * nh * d, h, w), self.block, self.halo)
        nb, nq, nk = q.shape[1], q.shape[2], k.shape[2]
        q = q.reshape(b * nh, d, nb, nq).permute(0, 2, 3, 1)
        k = k.reshape(b * nh, d, nb, nk).permute(0, 2, 1, 3)
        v = v.reshape(b * nh, d, nb, nk).permute(0, 2, 3, 1)
        logits = torch.matmul(q, k)
        window = self.rel_rows.shape[1]
        shape = (b * nh, nb, nq, window)
        by_row = torch.gather(torch.matmul(q, self.rel_height.t()), 3, self.rel_rows.expand(shape))
        by_col = torch.gather(torch.matmul(q, self.rel_width.t()), 3, self.rel_cols.expand(shape))
        rel = by_row.unsqueeze(4) + by_col.unsqueeze(3)
        logits = logits + rel.reshape(b * nh, nb, nq, nk)
        logits = logits + self._mask(int(h), int(w), x.device).reshape(1, nb, 1, nk)
        return logits, v


def make_attention(kind: str, c: int, heads: int, head_dim: int, block: int, halo: int, radius: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "block_mean":
        return BlockMeanAttention(c, heads, head_dim, block, halo)
    if radius > 0:
        return MaskedHaloAttention(c, heads, head_dim, block, halo, radius)
    return HaloAttention(c, heads, head_dim, block, halo)


class Block(nn.Module):
    def __init__(self, c_in, c_out, heads, cfg, kernel, masked: bool):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.reduce_bn = nn.BatchNorm2d(c_out) if cfg["bn_reduce"] else nn.Identity()
        radius = cfg["neighbour"] if masked else 0
        self.attention = make_attention(cfg["attention"], c_out, heads, cfg["head_dim"], cfg["block"], cfg["halo"],
                                        radius)
        self.conv = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.use_shortcut = not (radius > 0 and cfg["masked_residual"])
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        y = F.relu(self.attention(self.reduce_bn(self.reduce(x))))
        y = self.bn(self.conv(y))
        return F.relu(y + self.shortcut(x)) if self.use_shortcut else F.relu(y)


def coord_channels(n: int, h: int, w: int, device) -> torch.Tensor:
    ys = torch.linspace(-1, 1, h, device=device).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=device).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([ys, xs], 1)


class GlobalAE(nn.Module):
    """Strided convs down to a vector and back (EfficientAD-style): it can only rebuild the broad appearance."""

    def __init__(self, c_feat: int, grid: tuple[int, int], width: int, code: int):
        super().__init__()
        gh, gw = grid
        self.grid = grid
        layers, c = [], c_feat
        for _ in range(3):  # /8
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.down = nn.Sequential(*layers)
        self.small = (gh // 8, gw // 8)
        self.to_code = nn.Linear(width * self.small[0] * self.small[1], code)
        self.from_code = nn.Linear(code, width * self.small[0] * self.small[1])
        ups = []
        for _ in range(3):
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.up = nn.Sequential(*ups, nn.Conv2d(width, c_feat, 1))
        self.width = width

    def forward(self, f):
        n = f.shape[0]
        z = self.to_code(self.down(f).flatten(1))
        y = self.from_code(F.relu(z)).view(n, self.width, *self.small)
        return self.up(y)


DEFAULT_AE = {
    "widths": [64, 64, 48, 32, 24], "heads": [2, 2, 2, 2], "head_dim": 16, "kernels": [3, 3, 3, 3], "block": 8,
    "halo": 2, "attention": "halo", "neighbour": 0, "masked_residual": True, "mask_where": "all", "bn_reduce": False,
    "coords": False, "global_width": 0, "global_code": 64, "down": 1,
}


class ResearchAE(nn.Module):
    """Stem (1x1 conv, BN, ReLU) -> encoder blocks -> latent -> mirrored decoder blocks -> 1x1 conv to features."""

    def __init__(self, c_feat: int, grid: tuple[int, int], cfg: dict):
        super().__init__()
        cfg = {**DEFAULT_AE, **cfg}
        self.cfg = cfg
        w = cfg["widths"]
        extra = 2 if cfg["coords"] else 0
        down = cfg["down"]
        # down > 1: the blocks work on a grid `down` times coarser (a spatial bottleneck; less identity, less cost)
        pool = [] if down == 1 else [nn.AvgPool2d(down)]
        self.stem = nn.Sequential(*pool, nn.Conv2d(c_feat + extra, w[0], 1, bias=False), nn.BatchNorm2d(w[0]),
                                  nn.ReLU())
        blocks = list(zip(w[:-1], w[1:], cfg["heads"], cfg["kernels"]))
        enc_masked = cfg["mask_where"] in ("all", "encoder")
        dec_masked = cfg["mask_where"] in ("all", "decoder")
        self.encoder = nn.Sequential(*(Block(a, b, h, cfg, k, enc_masked) for a, b, h, k in blocks))
        dec = [Block(b + (extra if i == 0 else 0), a, h, cfg, k, dec_masked)
               for i, (a, b, h, k) in enumerate(reversed(blocks))]
        self.decoder = nn.Sequential(*dec)
        # down > 1: project at the coarse grid, upsample, then a depthwise 3x3 to sharpen (cheap at full size)
        up = [] if down == 1 else [nn.Upsample(scale_factor=down, mode="bilinear", align_corners=False),
                                   nn.Conv2d(c_feat, c_feat, 3, padding=1, groups=c_feat)]
        self.to_features = nn.Sequential(nn.Conv2d(w[0], c_feat, 1), *up)
        self.global_ae = GlobalAE(c_feat, grid, cfg["global_width"], cfg["global_code"]) if cfg["global_width"] else None

    def forward(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = f.shape
        x = torch.cat([f, coord_channels(n, h, w, f.device)], 1) if self.cfg["coords"] else f
        z = self.encoder(self.stem(x))
        if self.cfg["coords"]:
            z = torch.cat([z, coord_channels(n, *z.shape[-2:], f.device)], 1)
        out = {"local": self.to_features(self.decoder(z))}
        if self.global_ae is not None:
            out["global"] = self.global_ae(f)
        return out
