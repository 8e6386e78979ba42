"""MVTec-layout dataset folders: scanning, a seeded holdout split, loading at the model size, and a fingerprint.

Layout of one category folder::

    <cat>/train/good/*.png|jpg|...                 normal images used for fitting (minus the holdout)
    <cat>/test/good/*                              normal test images
    <cat>/test/<defect>/<stem>.<ext>               defective test images
    <cat>/ground_truth/<defect>/<stem>_mask.png    their pixel masks (any non-zero value = defect)

``ground_truth/`` is optional: a folder without it has image-level labels only (many plant sets, ELPV), and
evaluation then reports image figures only. With it, every defective test image needs its mask.

Every image goes through ``edge_inspector.preprocess.to_model_input``, the same function the line uses, so training,
evaluation and the line see identical inputs. Masks follow the same geometry with nearest-neighbour resizing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from edge_inspector.data.groups import group_keys, split_by_group
from edge_inspector.errors import DataError
from edge_inspector.preprocess import ResizeMode, to_model_input

if TYPE_CHECKING:  # a type only: data/ sits beside model/, not above it
    from edge_inspector.model.presets import TrainSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


@dataclass(frozen=True)
class LabelledImage:
    """One test image with its label."""

    path: Path
    defect: str
    """'good' or the defect type (the folder name under ``test/``)."""
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass(frozen=True)
class Category:
    """A scanned category folder (paths only; nothing is loaded)."""

    root: Path
    train: tuple[Path, ...]
    test: tuple[LabelledImage, ...]

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.is_anomalous})

    @property
    def has_masks(self) -> bool:
        """Whether the defective test images have pixel masks (False: image-level labels only, no ground_truth/)."""
        return all(s.mask_path is not None for s in self.test if s.is_anomalous)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_category(root: str | Path, require_test: bool = False) -> Category:
    """Scan an MVTec-layout category folder.

    Args:
        root: the category folder (the one holding ``train/``); without ``ground_truth/`` the defective test
            images have no masks (image-level labels only).
        require_test: raise if there is no usable ``test/`` split (evaluation needs one; training does not).

    Raises:
        DataError: the folder is missing or not in the expected layout (the message says what was expected), or
            ``ground_truth/`` exists but lacks a defective image's mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder not found: {root}")
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir())) or "nothing"
        raise DataError(
            f"{root} is not an MVTec-layout category folder: {train_dir} is missing (found: {found}). "
            "Expected <cat>/train/good, <cat>/test/<good|defect>, <cat>/ground_truth/<defect>/<stem>_mask.png"
        )
    train = tuple(_images_in(train_dir))
    if not train:
        raise DataError(f"{train_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    test: list[LabelledImage] = []
    test_dir = root / "test"
    with_masks = (root / "ground_truth").is_dir()  # absent: image-level labels only
    if test_dir.is_dir():
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for path in _images_in(defect_dir):
                mask = None
                if defect_dir.name != GOOD and with_masks:
                    mask = root / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
                    if not mask.is_file():
                        raise DataError(f"Mask missing for {path}: expected {mask}")
                test.append(LabelledImage(path, defect_dir.name, mask))
    if require_test:
        if not test:
            raise DataError(f"{root}: no test images under {test_dir}")
        if not any(s.is_anomalous for s in test) or all(s.is_anomalous for s in test):
            raise DataError(f"{test_dir} needs both good and defective images to evaluate (found only one kind)")
    return Category(root, train, tuple(test))


def split_holdout(paths: tuple[Path, ...] | list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded, deterministic split of the training images into (fit, holdout).

    The holdout never reaches the optimiser: it gives the normal mean map, the normal score statistics and the
    thresholds. The split depends only on the sorted file names and the seed, never on the order of the listing.

    Raises:
        DataError: fewer than two images, or a fraction that would leave one side empty.
    """
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    ordered = sorted(paths)
    n_holdout = max(1, round(len(ordered) * fraction))
    if len(ordered) - n_holdout < 1:
        raise DataError(f"{len(ordered)} training images are too few to hold {n_holdout} back for normal statistics")
    order = np.random.default_rng(seed).permutation(len(ordered))
    held = set(order[:n_holdout].tolist())
    fit = [p for i, p in enumerate(ordered) if i not in held]
    holdout = [p for i, p in enumerate(ordered) if i in held]
    return fit, holdout


def holdout_split(category: Category, train: TrainSpec) -> tuple[list[Path], list[Path]]:
    """The (fit, holdout) split of ``category.train`` that the training settings define (their fraction and seed;
    whole parts at a time when ``train.group_by`` is set, ``data/groups.py``).

    Training, export, evaluation of a checkpoint and calibration all call this, so every one of them holds back the
    same images.

    Raises:
        DataError: ``train.holdout_fraction`` is 0 (normal statistics and thresholds need held-back images), a
            group pattern does not fit the file names, or the split is refused.
    """
    if train.holdout_fraction <= 0:
        raise DataError("train.holdout_fraction is 0: normal statistics and thresholds need held-back good images")
    if train.group_by is None:
        if train.group_gap is not None:
            raise DataError("train.group_gap needs train.group_by (the pattern that captures the frame number)")
        return split_holdout(category.train, train.holdout_fraction, train.seed)
    paths = list(category.train)
    groups = group_keys(paths, train.group_by, train.group_gap)
    return split_by_group(paths, groups, train.holdout_fraction, train.seed)


def data_fingerprint(paths: list[Path] | tuple[Path, ...], root: Path) -> str:
    """sha256 over the sorted relative paths and byte sizes of ``paths`` (cheap; detects changed sets)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 BGR (gray files are expanded to three channels by OpenCV).

    Raises:
        DataError: the file cannot be decoded.
    """
    buffer = np.fromfile(path, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise DataError(f"Cannot read image {path} (corrupt or not an image)")
    return image


def load_images(
    paths: list[Path] | tuple[Path, ...],
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    pad_value: int = 0,
    progress: bool = False,
    desc: str = "loading images",
) -> np.ndarray:
    """Load images at the model size: (N, height, width, 3) uint8 RGB, via ``to_model_input``."""
    out = np.empty((len(paths), height, width, 3), np.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress, leave=False)):
        to_model_input(read_image(path), width, height, resize, pad_value, bgr=True, out=out[i])
    return out


def load_mask(sample: LabelledImage, width: int, height: int, resize: ResizeMode = "stretch") -> np.ndarray:
    """The sample's mask at the model size as a (height, width) bool array (all False for good images).

    The mask gets exactly the geometry ``to_model_input`` gives its image (stretch or letterbox placement) but
    nearest-neighbour resizing, so it stays binary.

    Raises:
        DataError: the mask cannot be read.
    """
    out = np.zeros((height, width), bool)
    if sample.mask_path is None:
        return out
    mask = cv2.imdecode(np.fromfile(sample.mask_path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"Cannot read mask {sample.mask_path}")
    if resize == "stretch":
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    # Letterbox: reuse the image geometry so mask and image line up to the pixel.
    _, placement = to_model_input(np.zeros((*mask.shape, 3), np.uint8), width, height, "letterbox")
    resized = cv2.resize(mask, (placement.width, placement.height), interpolation=cv2.INTER_NEAREST)
    out[placement.y : placement.y + placement.height, placement.x : placement.x + placement.width] = resized > 0
    return out


def load_test_set(
    category: Category,
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    pad_value: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """All test images and masks at the model size: ((N, H, W, 3) uint8 RGB, (N, H, W) bool)."""
    images = load_images([s.path for s in category.test], width, height, resize, pad_value, progress, "test images")
    masks = np.stack([load_mask(s, width, height, resize) for s in category.test]) if category.test else np.zeros(
        (0, height, width), bool
    )
    return images, masks
