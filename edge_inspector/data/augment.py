"""CutPaste augmentations (Li et al., CVPR 2021) on uint8 RGB images, seeded by a numpy Generator.

CutPaste-normal: a rectangle (2-15 % of the area, aspect 0.3-3.3) cut from one place and pasted at another, with a
mild brightness jitter. CutPaste-scar: a thin rotated strip (2-16 x 10-25 px at 256 px, scaled with the image)
pasted elsewhere. HaloAE trains its classifier head on (normal, CutPaste-normal, CutPaste-scar).
"""

from __future__ import annotations

import cv2
import numpy as np


def _check(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")


def _jitter(patch: np.ndarray, rng: np.random.Generator, amount: float = 0.1) -> np.ndarray:
    """Scale brightness by 1 +- amount so a pasted patch is not an exact copy of its surroundings."""
    factor = 1 + rng.uniform(-amount, amount)
    return np.clip(patch.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def cutpaste_normal(
    image: np.ndarray,
    rng: np.random.Generator,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: float = 0.3,
) -> np.ndarray:
    """A copy of ``image`` with a random rectangle pasted from another random place."""
    _check(image)
    h, w = image.shape[:2]
    area = rng.uniform(*area_ratio) * h * w
    log_aspect = rng.uniform(np.log(aspect_ratio), np.log(1 / aspect_ratio))
    aspect = float(np.exp(log_aspect))
    ph = int(np.clip(round(np.sqrt(area / aspect)), 1, h - 1))
    pw = int(np.clip(round(np.sqrt(area * aspect)), 1, w - 1))
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out = image.copy()
    out[ty : ty + ph, tx : tx + pw] = _jitter(image[sy : sy + ph, sx : sx + pw], rng)
    return out


def cutpaste_scar(
    image: np.ndarray,
    rng: np.random.Generator,
    width: tuple[int, int] = (2, 16),
    height: tuple[int, int] = (10, 25),
    max_angle: float = 45.0,
) -> np.ndarray:
    """A copy of ``image`` with a thin rotated strip cut from one place and pasted at another."""
    _check(image)
    h, w = image.shape[:2]
    scale = min(h, w) / 256
    sw = max(1, int(round(rng.integers(width[0], width[1] + 1) * scale)))
    sh = max(2, int(round(rng.integers(height[0], height[1] + 1) * scale)))
    sw, sh = min(sw, min(h, w) - 2), min(sh, min(h, w) - 2)
    sy, sx = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
    strip = _jitter(image[sy : sy + sh, sx : sx + sw], rng)
    # Rotate the strip inside a square canvas big enough for any angle; the mask marks its pixels.
    side = int(np.ceil(np.hypot(sh, sw))) + 2
    side = min(side, h, w)
    canvas = np.zeros((side, side, 3), np.uint8)
    mask = np.zeros((side, side), np.uint8)
    oy, ox = (side - sh) // 2, (side - sw) // 2
    canvas[oy : oy + sh, ox : ox + sw] = strip
    mask[oy : oy + sh, ox : ox + sw] = 255
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-max_angle, max_angle)), 1.0)
    canvas = cv2.warpAffine(canvas, rot, (side, side), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, rot, (side, side), flags=cv2.INTER_NEAREST)
    ty, tx = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    out = image.copy()
    region = out[ty : ty + side, tx : tx + side]
    region[mask > 0] = canvas[mask > 0]
    return out


def cutpaste_batch(originals: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) originals -> (3B, H, W, 3) [originals, CutPaste-normal, CutPaste-scar] and labels [0.., 1.., 2..]."""
    normal = np.stack([cutpaste_normal(img, rng) for img in originals])
    scar = np.stack([cutpaste_scar(img, rng) for img in originals])
    labels = np.repeat(np.arange(3), len(originals))
    return np.concatenate([originals, normal, scar]), labels
