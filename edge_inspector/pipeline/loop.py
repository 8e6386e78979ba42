"""The line's loop: capture -> preprocess + inference -> decision + overlay -> sinks, each stage in its own thread.

Stages hand work on through bounded queues, so a slow stage slows the ones before it instead of eating memory.
Free-run mode keeps only the newest frame and counts what it drops; triggered mode blocks instead and never drops.
A watchdog turns an inference that overruns ``decision.inference_timeout_s`` into the fail-safe verdict (and so
every part queued behind it while the engine stays stuck): a part is never passed because the model did not answer.
Every part gets a verdict: a frame that comes with an error (an unreadable file, a trigger still pending when the
line was paused) is judged fail-safe with that error, not dropped. Remote commands may move the threshold only
within the bundle's ``thresholds.command_range``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace

import numpy as np

from edge_inspector.bundle.manifest import Manifest
from edge_inspector.capture.camera import LatestFrameReader, ReopeningSource
from edge_inspector.capture.frame import Frame, Source
from edge_inspector.config import CaptureSettings, DecisionSettings, RoiSettings
from edge_inspector.engines.base import Engine
from edge_inspector.log import kv
from edge_inspector.pipeline.decision import DecisionParams
from edge_inspector.pipeline.judge import Job, Judge
from edge_inspector.pipeline.roi import RoiMapper
from edge_inspector.pipeline.stats import LoopStats
from edge_inspector.preprocess import to_model_input
from edge_inspector.publish.commands import Command
from edge_inspector.results import Sink, Verdict

log = logging.getLogger(__name__)

_END = object()  # queue sentinel: no more work will come


class InspectionLoop:
    """Runs the line until the source ends, ``max_frames`` parts are judged, or ``stop()``.

    Args:
        source: an unopened frame source.
        engine: an opened engine.
        manifest: the bundle's manifest (input size, thresholds, model id).
        sinks: result consumers, called in order from the publish thread.
        overlay: draw the overlay for 'all' parts, 'fail' parts only (archive), or 'none'.
    """

    def __init__(self, source: Source, engine: Engine, manifest: Manifest, sinks: list[Sink], *,
                 capture: CaptureSettings | None = None, decision: DecisionSettings | None = None,
                 roi: RoiSettings | None = None, station: str = "station-1", overlay: str = "fail"):
        self.capture = capture or CaptureSettings()
        decision = decision or DecisionSettings()
        self.engine, self.manifest, self.sinks, self.station = engine, manifest, sinks, station
        self.params = DecisionParams(
            threshold=decision.threshold or manifest.thresholds.image,
            pixel_threshold=decision.pixel_threshold or manifest.thresholds.pixel,
            sensitivity=decision.sensitivity,
            min_region_area_px=decision.min_region_area_px,
            fail_safe_verdict=Verdict(decision.fail_safe_verdict),
        )
        self.timeout_s = decision.inference_timeout_s
        self.mode = self.capture.mode if self.capture.mode != "auto" else ("free_run" if source.live else "triggered")
        self.software_trigger = self.mode == "triggered" and self.capture.trigger_source == "mqtt"
        self._stop, self._running = threading.Event(), threading.Event()
        self._running.set()
        reopening = ReopeningSource(source, self.capture.reopen_backoff_s, self._stop)
        newest_only = source.live and (self.mode == "free_run" or self.software_trigger)
        self.reader = LatestFrameReader(reopening) if newest_only else reopening
        self.roi = RoiMapper(roi)
        self.judge = Judge(manifest, self.roi, station, overlay)
        self.stats = LoopStats()
        self._triggers: queue.Queue[str] = queue.Queue()
        self._q_infer, self._q_decide, self._q_publish = (queue.Queue(self.capture.queue_size) for _ in range(3))
        self._lock = threading.Lock()
        self._inflight: Job | None = None
        self.failure: str | None = None
        self._watchdog_ended = False
        self._capture_done, self._done = threading.Event(), threading.Event()
        stages = (self._capture_stage, self._inference_stage, self._decision_stage, self._publish_stage, self._watchdog)
        self._threads = [threading.Thread(target=self._guard(fn), name=fn.__name__, daemon=True) for fn in stages]

    def start(self) -> None:
        self.reader.open()
        for thread in self._threads:
            thread.start()
        log.info("loop started", extra=kv(station=self.station, mode=self.mode, source=self.reader.name,
                                          engine=self.engine.name, threshold=self.params.effective_threshold))

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)  # True once every result has reached the sinks

    def stop(self) -> None:
        """Stop reading, let what was captured finish, close the sinks and the source."""
        self._stop.set()
        self._running.set()
        self._done.wait(max(5.0, self.timeout_s * 2))
        self.reader.close()
        if self.failure:  # the publish stage may never reach its own clean-up
            self._close_sinks()

    def run(self) -> dict:
        """start + wait + stop; returns the stats snapshot."""
        self.start()
        try:
            while not self.wait(0.2):  # short waits keep Ctrl-C responsive
                pass
        finally:
            self.stop()
        return self.snapshot()

    def pause(self) -> None:
        """Stop judging. Software triggers still pending get the fail-safe verdict ("paused"), not a late frame."""
        self._running.clear()
        log.warning("loop paused", extra=kv(station=self.station))

    def resume(self) -> None:
        self._running.set()
        log.warning("loop resumed", extra=kv(station=self.station))

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def trigger(self, part_id: str) -> None:
        """Software trigger: judge the next frame as ``part_id`` (triggered mode with trigger_source=mqtt)."""
        if not self.software_trigger:
            raise ValueError("software triggers need capture.mode=triggered and capture.trigger_source=mqtt")
        if self.paused:
            raise ValueError("the line is paused: resume it before triggering (trigger not taken)")
        self._triggers.put(part_id)

    def set_threshold(self, value: float) -> None:
        """Remote command: a new raw threshold, within the bundle's ``thresholds.command_range`` (else ValueError)."""
        self.params = self._within_command_range(replace(self.params, threshold=value))
        log.warning("threshold changed", extra=kv(threshold=value, effective=self.params.effective_threshold))

    def set_sensitivity(self, value: float) -> None:
        """Remote command: a new sensitivity, such that the effective threshold stays within the command range."""
        self.params = self._within_command_range(replace(self.params, sensitivity=value))
        log.warning("sensitivity changed", extra=kv(sensitivity=value, effective=self.params.effective_threshold))

    def _within_command_range(self, params: DecisionParams) -> DecisionParams:
        thresholds = self.manifest.thresholds
        low, high = (factor * thresholds.image for factor in thresholds.command_range)
        effective = params.effective_threshold
        if low <= effective <= high:
            return params
        # t_eff = t (1 - s) / s, so at threshold t the sensitivities that keep t_eff in [low, high] are these:
        allowed_s = (params.threshold / (params.threshold + high), params.threshold / (params.threshold + low))
        raise ValueError(
            f"refused: the effective threshold would be {effective:.4g}, outside what commands may set: "
            f"[{low:.4g}, {high:.4g}] ({thresholds.command_range[0]:g}x to {thresholds.command_range[1]:g}x the "
            f"calibrated {thresholds.image:.4g}, thresholds.command_range in the bundle manifest); at threshold "
            f"{params.threshold:.4g} the sensitivity may lie in [{allowed_s[0]:.3f}, {allowed_s[1]:.3f}]")

    def apply_command(self, command: Command) -> dict:
        """Apply a validated remote command; returns what the line now uses (for the command response).

        This is the MQTT publisher's command handler (wired by ``pipeline.line.build_line``).
        """
        command.apply(self)
        return {"threshold": self.params.threshold, "sensitivity": self.params.sensitivity,
                "effective_threshold": self.params.effective_threshold, "paused": self.paused}

    def snapshot(self) -> dict:
        snap = self.stats.snapshot()
        snap["counts"]["dropped"] = snap["counts"].get("dropped", 0) + getattr(self.reader, "dropped", 0)
        source = self.reader.source if isinstance(self.reader, LatestFrameReader) else self.reader
        snap["source"] = {"name": source.name, "status": source.status, "reopens": source.reopens}
        snap.update(mode=self.mode, paused=self.paused, threshold=self.params.effective_threshold, failure=self.failure)
        return snap

    def _guard(self, stage):  # wraps each stage for its own thread
        def run() -> None:
            try:
                stage()
            except Exception as exc:  # a bug in one stage must stop the loop loudly, not hang it
                log.exception("loop stage crashed", extra=kv(stage=stage.__name__))
                self.failure = f"{stage.__name__} crashed: {type(exc).__name__}: {exc}"
                self._stop.set()
                self._capture_done.set()
                self._done.set()
        return run

    def _put(self, q: queue.Queue, item) -> bool:
        """Blocking put; a new frame is given up when the loop is stopping (False), a part already taken is not:
        a stop judges every part that entered the line."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._stop.is_set() and q is self._q_infer:
                    return False

    def _next_frame(self) -> Frame | None:
        if self.software_trigger:
            while True:
                try:
                    part_id = self._triggers.get(timeout=0.1)
                    break
                except queue.Empty:
                    if self._stop.is_set():
                        return None
            if self.paused:  # taken before the pause: answer it, with no frame from after the pause
                return Frame(None, 0, time.time(), self.reader.name, part_id=part_id, name="not judged",
                             error="the line was paused before this trigger was served")
            live = isinstance(self.reader, LatestFrameReader)
            frame = self.reader.read(newer_than=time.time()) if live else self.reader.read()
            if frame is not None:
                frame.part_id = part_id
            return frame
        if isinstance(self.reader, LatestFrameReader):
            while not self._stop.is_set():
                frame = self.reader.read(timeout=0.2)
                if frame is not None or self.reader.ended:
                    return frame
            return None
        return self.reader.read()

    def _capture_stage(self) -> None:
        judged_limit = self.capture.max_frames
        taken = 0
        while not self._stop.is_set() and not (judged_limit and taken >= judged_limit):
            # Paused software triggers keep flowing, to be answered fail-safe (``_next_frame``).
            while not self.software_trigger and not self._running.wait(0.1):
                if self._stop.is_set():
                    break
            frame = self._next_frame()
            if frame is None:
                break
            taken += 1
            self.stats.count("frames_read")
            job = Job(frame)
            job.timings["decode"] = frame.decode_ms
            if self.mode == "free_run":
                taken -= self._put_newest(job)  # a dropped frame does not count towards max_frames
            elif not self._put(self._q_infer, job):
                break
        self._capture_done.set()

    def _put_newest(self, job: Job) -> int:
        """Free run: make room by dropping the oldest waiting frames, never block the camera; returns the drops."""
        dropped = 0
        while True:
            try:
                self._q_infer.put_nowait(job)
                self.stats.count("dropped", dropped)
                return dropped
            except queue.Full:
                try:
                    self._q_infer.get_nowait()
                    dropped += 1
                except queue.Empty:
                    pass

    def _inference_stage(self) -> None:
        spec = self.manifest.input
        buffer = np.empty((spec.height, spec.width, 3), np.uint8)
        while True:
            try:
                job = self._q_infer.get(timeout=0.1)
            except queue.Empty:
                if self._capture_done.is_set() and self._q_infer.empty():
                    break
                continue
            if job.frame.error:  # nothing to infer on: judged fail-safe with the frame's own error
                job.error = job.frame.error
                self._put(self._q_decide, job)
                continue
            start = time.perf_counter()
            try:
                roi_image = self.roi.cut(job.frame.image)
                image, placement = to_model_input(roi_image, spec.width, spec.height, spec.resize, spec.pad_value,
                                                  out=buffer)
                job.model_to_frame = self.roi.model_to_frame(placement)
            except Exception as exc:  # bad frame or ROI: judge this part fail-safe, keep the line running
                job.error = f"preprocessing failed: {exc}"
                self._put(self._q_decide, job)
                continue
            job.timings["preprocess"] = (time.perf_counter() - start) * 1e3
            with self._lock:
                job.started = time.monotonic()
                self._inflight = job
            start = time.perf_counter()
            try:
                output = self.engine.infer(image)
                error = None
            except Exception as exc:  # any engine failure becomes the fail-safe verdict downstream
                output, error = None, f"inference failed: {exc}"
            elapsed = (time.perf_counter() - start) * 1e3
            with self._lock:
                self._inflight = None
                if job.abandoned:
                    continue
            job.output, job.error = output, error
            job.timings["inference"] = elapsed
            self._put(self._q_decide, job)
        if not self._watchdog_ended:
            self._put(self._q_decide, _END)

    def _watchdog(self) -> None:
        """Fail-safe the part whose inference overran the timeout, and every part queued while the engine is stuck."""
        tick = min(0.05, self.timeout_s / 4)
        while not self._done.is_set():
            time.sleep(tick)
            with self._lock:
                job = self._inflight
                overdue = job is not None and time.monotonic() - job.started > self.timeout_s
                newly = overdue and not job.abandoned
                if newly:
                    job.abandoned = True
                    job.error = f"inference timed out after {self.timeout_s:g} s"
            if not overdue:
                continue
            if newly:
                self.stats.count("timeouts")
                self._put(self._q_decide, job)
            while True:
                try:
                    queued = self._q_infer.get_nowait()
                except queue.Empty:
                    break
                queued.error = "engine still busy with a timed-out inference"
                self._put(self._q_decide, queued)
            if self._capture_done.is_set() and self._q_infer.empty():
                if self._inflight is not None:  # the inference thread may never return: finish the run without it
                    self._watchdog_ended = True
                    self._put(self._q_decide, _END)
                    return

    def _decision_stage(self) -> None:
        while True:
            job = self._q_decide.get()
            if job is _END:
                self._put(self._q_publish, _END)
                return
            if job.failed:
                self.stats.count("errors")
            result = self.judge(job, self.params)  # one consistent snapshot even if a command changes it meanwhile
            self.stats.record_part(job.timings, result.verdict.value)
            self._put(self._q_publish, result)

    def _publish_stage(self) -> None:
        failed: set = set()
        while True:
            result = self._q_publish.get()
            if result is _END:
                break
            start = time.perf_counter()
            for sink in self.sinks:
                try:
                    sink.handle(result)
                except Exception:  # one broken sink must not silence the others; log it once, then count
                    self.stats.count("sink_errors")
                    if id(sink) not in failed:
                        failed.add(id(sink))
                        log.exception("sink failed; further failures only counted", extra=kv(sink=type(sink).__name__))
            self.stats.record("publish", (time.perf_counter() - start) * 1e3)
        self._close_sinks()
        self._done.set()

    def _close_sinks(self) -> None:
        with self._lock:
            sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception:  # still close the others and finish
                log.exception("sink close failed", extra=kv(sink=type(sink).__name__))
