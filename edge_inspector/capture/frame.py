"""What every frame source delivers (``Frame``) and the interface a source has (``Source``).

Kept apart from the sources themselves so that each source module (``sources``, ``demo_line``) and the loop depend
on this small module only, not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Frame:
    """One image from a source, with where and when it came from."""

    image: np.ndarray | None
    """BGR (or gray) uint8, full frame; None when there is no picture to judge (``error`` says why)."""
    index: int
    """Position in the source (0, 1, ...), counting every frame read, judged or not."""
    captured_at: float
    """Unix time the frame was read."""
    source: str
    decode_ms: float = 0.0
    label: bool | None = None
    """Known ground truth (True = defective) when the source has it."""
    name: str = ""
    """File name or other human id of the frame."""
    part_id: str | None = None
    """Trigger id when a software trigger asked for this frame."""
    error: str | None = None
    """Why this part cannot be judged from its picture (unreadable or truncated file, line paused before a pending
    trigger was served): the loop gives it the fail-safe verdict with this error, and never skips it."""


class Source(Protocol):
    """A frame source; ``open`` before the first ``read``, ``close`` when done (the loop does both)."""

    name: str
    live: bool
    """True for cameras and streams: frames keep coming and a failure means reconnect, not end of input."""

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a finite source. Raises SourceError when a live source fails."""
        ...

    def close(self) -> None: ...
