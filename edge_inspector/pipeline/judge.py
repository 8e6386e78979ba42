"""Judging one part: the engine's answer -> decision (verdict, regions, mask) -> optional overlay -> result.

The loop's decision stage calls ``Judge`` once per part, with the decision parameters current at that moment (a
command may change them between parts). Anything that goes wrong here fails closed: no model output, an error or
an exception in the decision gives the fail-safe verdict; a failed overlay only loses the picture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge_inspector.bundle.manifest import Manifest
from edge_inspector.capture.frame import Frame
from edge_inspector.engines.base import EngineOutput
from edge_inspector.log import kv
from edge_inspector.pipeline.decision import Decision, DecisionParams, decide, fail_safe
from edge_inspector.pipeline.overlay import draw_overlay
from edge_inspector.pipeline.roi import RoiMapper
from edge_inspector.results import InspectionResult, Verdict

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One part on its way through the loop's stages."""

    frame: Frame
    timings: dict[str, float] = field(default_factory=dict)
    model_to_frame: np.ndarray | None = None
    output: EngineOutput | None = None
    error: str | None = None
    started: float = 0.0  # time.monotonic() when inference began, for the watchdog
    abandoned: bool = False  # the watchdog gave it the fail-safe verdict; a late engine answer is dropped

    @property
    def failed(self) -> bool:
        """Preprocessing or inference gave no usable answer: the part gets the fail-safe verdict."""
        return self.output is None or bool(self.error)


class Judge:
    """Turns finished jobs into ``InspectionResult`` objects.

    Args:
        manifest: the bundle's manifest (model id).
        roi: the station's ROI mapper (its outline is drawn on overlays).
        station: station name, part of generated part ids.
        overlay: draw the overlay for 'all' parts, 'fail' parts only (archive), or 'none'.
    """

    def __init__(self, manifest: Manifest, roi: RoiMapper, station: str, overlay: str = "fail"):
        self.manifest, self.roi, self.station, self.overlay = manifest, roi, station, overlay
        self.run_id = int(time.time())
        """Part of generated part ids, so ids from different runs of a station differ."""

    def __call__(self, job: Job, params: DecisionParams) -> InspectionResult:
        """Decide, draw and time one part; ``job.timings`` gets its decision, overlay and total times."""
        frame = job.frame
        start = time.perf_counter()
        if job.failed:
            decision = fail_safe(params, job.error or "no model output")
            log.warning("fail-safe verdict", extra=kv(frame=frame.index, error=decision.error))
        else:
            try:
                decision = decide(job.output.anomaly_map, job.output.score, params, job.model_to_frame,
                                  frame.image.shape)
            except Exception as exc:  # fail closed on anything unexpected
                decision = fail_safe(params, f"decision failed: {exc}")
        job.timings["decision"] = (time.perf_counter() - start) * 1e3
        overlay = None
        wanted = self.overlay == "all" or (self.overlay == "fail" and decision.verdict != Verdict.PASS)
        if wanted and frame.image is not None:
            start = time.perf_counter()
            overlay = self._draw(job, decision, params)
            job.timings["overlay"] = (time.perf_counter() - start) * 1e3
        decided = time.time()
        job.timings["total"] = (decided - frame.captured_at) * 1e3 + frame.decode_ms
        return InspectionResult(
            sequence=0, part_id=frame.part_id or f"{self.station}-{self.run_id}-{frame.index}",
            captured_at=frame.captured_at, decided_at=decided, verdict=decision.verdict, score=decision.score,
            normalized_score=decision.normalized_score, threshold=decision.threshold, regions=decision.regions,
            model_id=self.manifest.model_id, latency_ms={k: round(v, 3) for k, v in job.timings.items()},
            source=frame.name or frame.source, frame_index=frame.index, error=decision.error, mask=decision.mask,
            frame=frame.image, overlay=overlay, ground_truth=frame.label,
        )

    def _draw(self, job: Job, decision: Decision, params: DecisionParams) -> np.ndarray | None:
        try:
            return draw_overlay(job.frame.image, job.output.anomaly_map if job.output else None,
                                job.model_to_frame if job.model_to_frame is not None else np.eye(2, 3),
                                params.pixel_threshold, decision.verdict, decision.normalized_score,
                                decision.regions, self.roi.outline())
        except Exception:  # an overlay is a picture: failing to draw it must not cost the verdict
            log.exception("overlay failed", extra=kv(frame=job.frame.index))
            return None
