"""The built-in demo line: a synthetic conveyor of textured parts, some with injected defects and known ground truth.

Each part is a random crop of one CC0 texture (scikit-image's brick, grass or gravel, shipped as PNG crops in
``textures/``) at reduced contrast, like a finished surface. A share of parts gets a defect with an exact mask:
a scratch (thin line), a spot (blurred blob) or a cut-paste (a patch of another texture). ``write_demo_dataset``
writes the same parts in MVTec layout so a model can be trained and evaluated on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_inspector.capture.frame import Frame
from edge_inspector.config import CaptureSettings
from edge_inspector.errors import SourceError

TEXTURE_DIR = Path(__file__).resolve().parent / "textures"
DEFECT_KINDS = ("scratch", "spot", "cut_paste")


def load_texture(name: str) -> np.ndarray:
    path = TEXTURE_DIR / f"{name}.png"
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        available = sorted(p.stem for p in TEXTURE_DIR.glob("*.png"))
        raise SourceError(f"Demo texture '{name}' not found in {TEXTURE_DIR}; available: {', '.join(available)}")
    return image


@dataclass(frozen=True)
class Part:
    image: np.ndarray
    """BGR uint8 (size, size, 3)."""
    mask: np.ndarray
    """uint8 (size, size), 255 on the defect."""
    defect: str | None
    """None for a good part, else one of DEFECT_KINDS."""


class PartMaker:
    """Draws parts of one product (one texture) with seeded randomness, so a run can be replayed exactly.

    Args:
        texture: 'brick', 'grass' or 'gravel'.
        size: side of the square part image in pixels.
        contrast: texture contrast kept (1.0 = original); low contrast makes a smooth surface where defects stand out.
        seed: random seed.
    """

    def __init__(self, texture: str = "gravel", size: int = 256, contrast: float = 0.2, seed: int = 0):
        base = load_texture(texture).astype(np.float32)
        self.texture = (base - base.mean()) * contrast + 128.0
        others = [n for n in ("brick", "grass", "gravel") if n != texture]
        self.foreign = load_texture(others[0]).astype(np.float32)
        self.size = size
        self.rng = np.random.default_rng(seed)
        # Sensor noise is cut from one field drawn up front: drawing it per part cost more than a small model's run.
        self.noise = self.rng.standard_normal((2 * size, 2 * size), dtype=np.float32) * 1.5
        if min(self.texture.shape) < size:
            raise SourceError(f"Demo part size {size} exceeds the texture ({self.texture.shape}); use size <= 384")

    def _crop(self, texture: np.ndarray) -> np.ndarray:
        limit_y, limit_x = texture.shape[0] - self.size, texture.shape[1] - self.size
        y, x = int(self.rng.integers(0, limit_y + 1)), int(self.rng.integers(0, limit_x + 1))
        crop = texture[y : y + self.size, x : x + self.size]
        return np.rot90(crop, int(self.rng.integers(0, 4))).copy()

    def make(self, defect: str | None = None) -> Part:
        surface = self._crop(self.texture) + self._crop(self.noise)
        mask = np.zeros(surface.shape, np.uint8)
        if defect == "scratch":
            self._scratch(surface, mask)
        elif defect == "spot":
            self._spot(surface, mask)
        elif defect == "cut_paste":
            self._cut_paste(surface, mask)
        elif defect is not None:
            raise ValueError(f"unknown defect kind {defect!r}; choose from {DEFECT_KINDS}")
        gray = np.clip(surface, 0, 255).astype(np.uint8)
        return Part(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), mask, defect)

    def _point(self, margin: int) -> tuple[int, int]:
        return tuple(int(v) for v in self.rng.integers(margin, self.size - margin, 2))

    def _scratch(self, surface: np.ndarray, mask: np.ndarray) -> None:
        start, end = self._point(16), self._point(16)
        while np.hypot(end[0] - start[0], end[1] - start[1]) < self.size / 4:
            end = self._point(16)
        width = int(self.rng.integers(2, 4))
        cv2.line(mask, start, end, 255, width)
        shade = float(self.rng.choice([-1, 1]) * self.rng.uniform(60, 90))
        surface[mask > 0] += shade

    def _spot(self, surface: np.ndarray, mask: np.ndarray) -> None:
        centre = self._point(24)
        axes = tuple(int(v) for v in self.rng.integers(4, 12, 2))
        cv2.ellipse(mask, centre, axes, float(self.rng.uniform(0, 180)), 0, 360, 255, -1)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)
        surface += soft * float(self.rng.choice([-1, 1]) * self.rng.uniform(60, 90))

    def _cut_paste(self, surface: np.ndarray, mask: np.ndarray) -> None:
        h, w = (int(v) for v in self.rng.integers(16, 40, 2))
        y, x = int(self.rng.integers(8, self.size - h - 8)), int(self.rng.integers(8, self.size - w - 8))
        patch = self._crop(self.foreign)[:h, :w]
        surface[y : y + h, x : x + w] = patch
        mask[y : y + h, x : x + w] = 255


class DemoLine:
    """A finite (or endless) conveyor of demo parts as a frame source; ground truth rides on each frame.

    Args:
        parts: number of parts before the line ends; 0 = endless.
        defect_rate: share of parts with a defect.
        interval_s: time between parts (0 = as fast as the judge takes them).
    """

    live = False

    def __init__(self, settings: CaptureSettings | None = None, parts: int = 0, defect_rate: float = 0.3,
                 texture: str = "gravel", size: int = 256, seed: int = 0, interval_s: float = 0.0):
        self.settings = settings or CaptureSettings()
        self.parts = parts
        self.defect_rate = defect_rate
        self.texture, self.size, self.seed = texture, size, seed
        self.interval_s = interval_s
        self.name = f"demo:{texture}"
        self._maker: PartMaker | None = None
        self._index = 0

    def open(self) -> None:
        self._maker = PartMaker(self.texture, self.size, seed=self.seed)
        self._index = 0

    def read(self) -> Frame | None:
        if self._maker is None:
            raise SourceError("demo line is not open")
        if self.parts and self._index >= self.parts:
            return None
        if self.interval_s:
            time.sleep(self.interval_s)
        start = time.perf_counter()
        rng = self._maker.rng
        defect = str(rng.choice(DEFECT_KINDS)) if rng.random() < self.defect_rate else None
        part = self._maker.make(defect)
        decode_ms = (time.perf_counter() - start) * 1e3
        name = f"part-{self._index:05d}" + (f"-{defect}" if defect else "")
        frame = Frame(part.image, self._index, time.time(), self.name, decode_ms, defect is not None, name)
        self._index += 1
        return frame

    def close(self) -> None:
        self._maker = None


def write_demo_dataset(root: str | Path, train_good: int = 200, test_good: int = 40, test_defect_each: int = 20,
                       texture: str = "gravel", size: int = 256, seed: int = 0) -> Path:
    """Write demo parts in MVTec layout: train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png.

    Returns:
        The category folder (``root/demo_<texture>``).
    """
    category = Path(root) / f"demo_{texture}"
    maker = PartMaker(texture, size, seed=seed)
    jobs = [("train/good", None, i) for i in range(train_good)] + [("test/good", None, i) for i in range(test_good)]
    jobs += [(f"test/{kind}", kind, i) for kind in DEFECT_KINDS for i in range(test_defect_each)]
    for folder, defect, i in tqdm(jobs, desc="demo dataset", unit="img"):
        part = maker.make(defect)
        (category / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(category / folder / f"{i:03d}.png"), part.image[:, :, 0])
        if defect:
            mask_dir = category / "ground_truth" / defect
            mask_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_dir / f"{i:03d}_mask.png"), part.mask)
    return category
