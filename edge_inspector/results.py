"""What the line produces for every judged part, and what consumes it.

Pure data shared by every run-time package: ``pipeline`` makes an ``InspectionResult`` per part and hands it to
each ``Sink``; the MQTT publisher, the archive (``publish``) and the console, collector and latest-result holder
(``pipeline.sinks``) are sinks. Nothing here imports another edge_inspector package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np


class Verdict(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    UNKNOWN = "UNKNOWN"
    """Fail-safe outcome when the model could not judge (error, timeout); PLCs treat it as a reject."""


@dataclass(frozen=True)
class Region:
    """One connected defect region, in full-frame pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area_px: int
    max_score: float
    contour: list[tuple[int, int]] = field(default_factory=list)
    """Simplified outline (full-frame pixels)."""


@dataclass
class InspectionResult:
    sequence: int
    """Monotonic per process run and station, persisted across restarts by the publisher's spool."""
    part_id: str
    """Trigger id from the PLC, or a generated id (station-sequence) in free-run mode."""
    captured_at: float
    """Unix time the frame was captured."""
    decided_at: float
    verdict: Verdict
    score: float | None
    """Raw image score (None when inference failed)."""
    normalized_score: float | None
    """0.5 = threshold; >= 0.5 is FAIL."""
    threshold: float
    """Effective raw threshold used for this decision (after sensitivity)."""
    regions: list[Region]
    model_id: str
    latency_ms: dict[str, float]
    """Per stage: decode, preprocess, inference, decision, overlay, total."""
    source: str = ""
    frame_index: int = 0
    error: str | None = None
    """Why the verdict is fail-safe, when it is."""
    mask: np.ndarray | None = None
    """uint8 (H, W) full-frame defect mask, 255 inside regions."""
    frame: np.ndarray | None = None
    """The original frame (BGR), for archive and preview; not serialised."""
    overlay: np.ndarray | None = None
    """Heat map + outlines + verdict drawn on the frame (BGR)."""
    ground_truth: bool | None = None
    """Known label when the source has one (demo line, labelled folders): True = defective."""


class Sink(Protocol):
    """Consumes results in order, on the loop's publish thread; ``close`` once after the last result.

    A sink should return quickly: the loop waits for it before the next sink and the next part. An exception from
    ``handle`` is logged and counted by the loop; the other sinks still get the result.
    """

    def handle(self, result: InspectionResult) -> None: ...

    def close(self) -> None: ...
