"""Synthetic defects with exact masks, made from good images: the probe set HQS scores units on and the
scoring head is chosen on.

Three kinds, cycled: CutPaste rectangles (a jittered patch moved elsewhere), scars (a thin rotated strip) and
Perlin-noise texture pastes (a smooth random blob region filled with a shifted, contrast-changed copy of the image,
DRAEM-style). The mask is exactly the set of pixels that changed by construction, so defect separation and pixel
AUROC on them need no labelling. Test images are never used: the goods come from the training holdout.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("cutpaste", "scar", "perlin")


@dataclass
class ProbeSet:
    """Images HQS measures units on.

    Attributes:
        normal: uint8 (N, H, W, 3) good images (training holdout).
        defects: uint8 (M, H, W, 3) synthetic defect images.
        masks: bool (M, H, W) exact defect pixels.
    """

    normal: np.ndarray
    defects: np.ndarray
    masks: np.ndarray
    groups: np.ndarray | None = None
    """(N + M,) the part each image shows (normals, then defects), for bootstrap intervals that redraw whole
    parts; None: every image on its own."""

    def images(self) -> np.ndarray:
        return np.concatenate([self.normal, self.defects])

    def labels(self) -> np.ndarray:
        return np.r_[np.zeros(len(self.normal), int), np.ones(len(self.defects), int)]

    def all_masks(self) -> np.ndarray:
        empty = np.zeros((len(self.normal), *self.masks.shape[1:]), bool)
        return np.concatenate([empty, self.masks])


def _jitter(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.6, 1.4)
    offset = rng.uniform(-30, 30)
    return np.clip(patch.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _cutpaste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph, pw = int(rng.uniform(0.08, 0.25) * h), int(rng.uniform(0.08, 0.25) * w)
    sy, sx = rng.integers(0, h - ph), rng.integers(0, w - pw)
    ty, tx = rng.integers(0, h - ph), rng.integers(0, w - pw)
    out, mask = image.copy(), np.zeros((h, w), bool)
    out[ty : ty + ph, tx : tx + pw] = _jitter(image[sy : sy + ph, sx : sx + pw], rng)
    mask[ty : ty + ph, tx : tx + pw] = True
    return out, mask


def _scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    scale = min(h, w) / 256
    length, width = int(rng.uniform(30, 80) * scale), max(2, int(rng.uniform(3, 8) * scale))
    cy, cx = rng.integers(length // 2, h - length // 2), rng.integers(length // 2, w - length // 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    line = np.zeros((h, w), np.uint8)
    cv2.line(line, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 255, width)
    mask = line > 0
    colour = rng.uniform(0, 255, size=3)
    out = image.copy()
    out[mask] = np.clip(0.3 * image[mask] + 0.7 * colour, 0, 255).astype(np.uint8)
    return out, mask


def perlin_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] on a ``cells`` x ``cells`` lattice."""
    h, w = shape
    angles = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.linspace(0, cells, h, endpoint=False), np.linspace(0, cells, w, endpoint=False)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grad[y0 + oy, x0 + ox]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * np.sqrt(2)


def _perlin(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    noise = perlin_noise((h, w), int(rng.choice([2, 4, 8])), rng)
    mask = noise > np.quantile(noise, 1 - rng.uniform(0.02, 0.10))
    texture = np.roll(image, (int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))), axis=(0, 1))
    texture = _jitter(texture, rng)
    beta = rng.uniform(0.1, 0.5)  # how much of the original shows through the pasted texture
    out = image.copy()
    out[mask] = np.clip(beta * image[mask] + (1 - beta) * texture[mask], 0, 255).astype(np.uint8)
    return out, mask


_MAKERS = {"cutpaste": _cutpaste, "scar": _scar, "perlin": _perlin}


def synthetic_defects(goods: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One defect per good image, cycling through CutPaste, scar and Perlin: (images, bool masks).

    Args:
        goods: uint8 (N, H, W, 3) good images.
        rng: seeded generator (the probe set must be reproducible).
    """
    if goods.dtype != np.uint8 or goods.ndim != 4 or goods.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {goods.dtype} {goods.shape}")
    images, masks = [], []
    for i, good in enumerate(goods):
        image, mask = _MAKERS[KINDS[i % len(KINDS)]](good, rng)
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def probe_from_goods(goods: np.ndarray, defects_per_good: int = 3, seed: int = 0,
                     groups: np.ndarray | None = None) -> ProbeSet:
    """Every good image as a normal, and ``defects_per_good`` synthetic defects made from each (one of each kind
    at 3): a probe as large as the held-back goods allow, every defect paired with its own good image.

    Args:
        groups: (N,) the part each good shows; its defects inherit it (default: each good its own part).
    """
    if len(goods) < 2 or defects_per_good < 1:
        raise ValueError("the probe set needs at least two good images and one defect per good")
    bases = np.repeat(np.arange(len(goods)), defects_per_good)
    defects, masks = synthetic_defects(goods[bases], np.random.default_rng(seed))
    parts = np.arange(len(goods)) if groups is None else np.asarray(groups)
    return ProbeSet(goods, defects, masks, np.r_[parts, parts[bases]])
