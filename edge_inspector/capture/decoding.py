"""One image file into pixels, or into the reason it cannot be judged: nothing a folder holds is ever skipped.

The header is read first (Pillow reads only that much), so a huge image is refused from its declared size before a
byte of it is decoded: a 20000 x 20000 PNG is a few hundred kilobytes on disk and gigabytes in memory. Pixels come
from OpenCV, as for every other source. A JPEG or PNG whose data stops early still decodes (OpenCV fills the rest
with grey and prints a warning nobody reads); that is caught from the file's missing end marker, and Pillow's
decoder says what it found. Each of these gives a ``Decoded`` with an ``error``, and the loop judges that part
fail-safe with the error in its result.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
"""Bytes each format ends with (JPEG's EOI marker cannot occur inside its entropy-coded data)."""
TAIL_BYTES = 1024
"""How far from the end the marker may sit (some writers pad after it)."""


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray | None
    """BGR uint8; None when nothing could be decoded. A truncated image keeps what was decoded, with ``error``."""
    error: str | None = None
    """Why this part cannot be judged from the file (it gets the fail-safe verdict), else None."""


def read_image(path: str | Path, max_pixels: int) -> Decoded:
    """Decode ``path`` as BGR, or say why it cannot be judged.

    Args:
        path: An image file.
        max_pixels: Largest width x height decoded (``capture.max_image_pixels``).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return Decoded(None, f"cannot read {path.name}: {exc.strerror or exc}")
    if size == 0:
        return Decoded(None, f"{path.name} is empty (0 bytes)")
    header = _header(path, max_pixels)
    if isinstance(header, str):
        return Decoded(None, header)
    kind, width, height = header
    if width * height > max_pixels:
        return Decoded(None, f"{path.name} is {width}x{height} ({width * height / 1e6:.0f} MP), over "
                             f"capture.max_image_pixels ({max_pixels / 1e6:.0f} MP); not decoded")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return Decoded(None, f"{path.name}: {kind} data cannot be decoded ({_decoder_message(path) or 'damaged'})")
    if not _ends_properly(path, kind, size):
        return Decoded(image, f"{path.name}: truncated {kind} file ({_decoder_message(path) or 'no end marker'})")
    return Decoded(image)


def _header(path: Path, max_pixels: int) -> tuple[str, int, int] | str:
    """(format, width, height) from the file's header, or why it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with Image.open(path) as image:
                return str(image.format), *image.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit (179 MP), so over ours too
        return f"{path.name} is over capture.max_image_pixels ({max_pixels / 1e6:.0f} MP); not decoded ({exc})"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"{path.name} is not an image this line can read: {exc}"


def _ends_properly(path: Path, kind: str, size: int) -> bool:
    marker = END_MARKERS.get(kind)
    if marker is None:
        return True
    with path.open("rb") as file:
        file.seek(max(0, size - TAIL_BYTES))
        return marker in file.read()


def _decoder_message(path: Path) -> str | None:
    """What Pillow's decoder says about the file (it raises on truncated data, where OpenCV only prints)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - any decoder complaint is the message we want
        return str(exc)
    return None
