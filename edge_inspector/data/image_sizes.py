"""Image sizes read from file headers, without decoding the pixels: what the automatic input size is chosen from.

Pillow opens an image lazily: ``size`` and the EXIF orientation come from the header. The sizes are the ones the
model will see: ``read_image`` (OpenCV) applies the EXIF orientation, so a quarter-turn tag swaps the sides here too.
A file Pillow cannot identify is decoded with ``read_image`` instead (slower, same result).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from edge_inspector.data.folders import read_image

EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = {5, 6, 7, 8}
"""EXIF orientations that rotate the image by 90 or 270 degrees (transpose, rotate 90, transverse, rotate 270)."""


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as it will be loaded (EXIF orientation applied).

    Raises:
        DataError: the file is neither readable by Pillow's header parsers nor decodable by OpenCV.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
            with Image.open(path) as image:
                width, height = image.size
                turned = image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        decoded = read_image(Path(path))
        return int(decoded.shape[1]), int(decoded.shape[0])
    return (height, width) if turned else (width, height)


def read_image_sizes(paths: Sequence[str | Path], progress: bool = False) -> list[tuple[int, int]]:
    """(width, height) of every image in ``paths``, in order."""
    return [read_image_size(p) for p in tqdm(paths, desc="image sizes", disable=not progress, leave=False)]
