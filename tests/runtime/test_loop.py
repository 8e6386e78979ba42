"""The threaded loop on the real ORT engine: triggered and free-run modes, fail-safe on errors and timeouts,
pause/resume, software triggers and run-time threshold changes."""

import inspect
import time

import cv2
import numpy as np
import pytest

from edge_inspector.bundle.store import load_bundle
from edge_inspector.capture.demo_line import DemoLine, PartMaker
from edge_inspector.capture.sources import FolderSource
from edge_inspector.config import CaptureSettings, DecisionSettings, EngineSettings, RoiSettings
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import EngineError
from edge_inspector.pipeline.loop import InspectionLoop
from edge_inspector.pipeline.sinks import CollectingSink
from edge_inspector.publish.commands import COMMANDS, Command
from edge_inspector.results import Verdict
from tests.fixtures.bundles import make_tiny_bundle

SIZE = 128


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = make_tiny_bundle(tmp_path_factory.mktemp("b") / "demo", SIZE, SIZE, image_threshold=0.085,
                            pixel_threshold=0.07, local=15, smooth=7).path
    return load_bundle(path)


@pytest.fixture(scope="module")
def engine(bundle):
    return OrtEngine(bundle, EngineSettings(intra_op_threads=1))


class SlowEngine:
    """The real engine behind a delay: stands in for an accelerator that hangs (cannot be provoked for real)."""

    def __init__(self, engine, delay_s, fail_every=0):
        self.engine, self.delay_s, self.fail_every, self.calls = engine, delay_s, fail_every, 0
        self.name = "slow-" + engine.name

    def infer(self, image):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise EngineError("device lost")
        time.sleep(self.delay_s)
        return self.engine.infer(image)

    def warmup(self, runs=2):
        pass

    def describe(self):
        return {}

    def close(self):
        pass


def _run(source, engine, bundle, **kwargs):
    sink = CollectingSink(keep_images=True)
    loop = InspectionLoop(source, engine, bundle.manifest, [sink], **kwargs)
    stats = loop.run()
    return sink.results, stats


def test_triggered_demo_run_judges_every_part_in_order(engine, bundle):
    results, stats = _run(DemoLine(parts=16, size=SIZE, seed=2, defect_rate=0.5), engine, bundle)
    assert [r.frame_index for r in results] == list(range(16))
    assert stats["counts"]["judged"] == 16 and stats["counts"].get("dropped", 0) == 0 and stats["mode"] == "triggered"
    correct = sum((r.verdict == Verdict.FAIL) == r.ground_truth for r in results)
    assert correct >= 14
    for result in results:
        assert {"decode", "preprocess", "inference", "decision", "total"} <= set(result.latency_ms)
        assert result.model_id == bundle.manifest.model_id and result.score is not None
        if result.verdict == Verdict.FAIL:
            assert result.overlay is not None and result.overlay.shape == result.frame.shape
            assert result.mask.shape == result.frame.shape[:2]
        else:
            assert result.overlay is None and result.regions == []
    for stage in ("decode", "preprocess", "inference", "decision", "publish", "total"):
        assert stats["latency_ms"][stage]["n"] > 0
        assert stats["latency_ms"][stage]["p99"] >= stats["latency_ms"][stage]["p50"] >= 0


def test_free_run_keeps_the_newest_and_counts_drops(engine, bundle):
    slow = SlowEngine(engine, 0.03)
    results, stats = _run(DemoLine(parts=30, size=SIZE), slow, bundle,
                          capture=CaptureSettings(mode="free_run", queue_size=1))
    counts = stats["counts"]
    assert counts["dropped"] > 0 and counts["judged"] + counts["dropped"] == 30
    assert [r.frame_index for r in results] == sorted(r.frame_index for r in results)


def test_engine_errors_give_the_fail_safe_verdict_and_the_line_goes_on(engine, bundle):
    failing = SlowEngine(engine, 0.0, fail_every=2)
    results, stats = _run(DemoLine(parts=6, size=SIZE), failing, bundle,
                          decision=DecisionSettings(fail_safe_verdict="UNKNOWN"))
    assert len(results) == 6
    failed = [r for r in results if r.error]
    assert len(failed) == 3 and all(r.verdict == Verdict.UNKNOWN and "device lost" in r.error for r in failed)
    assert stats["counts"]["errors"] == 3


def test_inference_timeout_is_a_fail_never_a_pass(engine, bundle):
    hung = SlowEngine(engine, 0.6)
    results, stats = _run(DemoLine(parts=3, size=SIZE, defect_rate=0.0), hung, bundle,
                          decision=DecisionSettings(inference_timeout_s=0.1))
    assert len(results) == 3
    assert all(r.verdict == Verdict.FAIL and r.score is None for r in results)
    assert "timed out" in results[0].error and stats["counts"]["timeouts"] >= 1


def test_max_frames_limits_the_run(engine, bundle):
    results, _ = _run(DemoLine(parts=0, size=SIZE), engine, bundle, capture=CaptureSettings(max_frames=5))
    assert len(results) == 5


def test_max_frames_counts_judged_parts_in_free_run(engine, bundle):
    results, stats = _run(DemoLine(parts=0, size=SIZE), SlowEngine(engine, 0.02), bundle,
                          capture=CaptureSettings(mode="free_run", queue_size=1, max_frames=6))
    assert len(results) == 6 and stats["counts"]["dropped"] > 0


def test_pause_holds_judging_until_resume(engine, bundle):
    sink = CollectingSink()
    loop = InspectionLoop(DemoLine(parts=4, size=SIZE), engine, bundle.manifest, [sink])
    loop.pause()
    loop.start()
    time.sleep(0.3)
    assert sink.results == [] and loop.snapshot()["paused"]
    loop.resume()
    assert loop.wait(10)
    loop.stop()
    assert len(sink.results) == 4


def _defect_folder(tmp_path):
    part = PartMaker(size=SIZE, seed=4).make("spot")
    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "spot.png"), part.image)
    return folder


def test_software_trigger_and_run_time_threshold_change(engine, bundle, tmp_path):
    sink = CollectingSink()
    capture = CaptureSettings(mode="triggered", trigger_source="mqtt", loop=True, max_frames=3)
    loop = InspectionLoop(FolderSource(_defect_folder(tmp_path), capture), engine, bundle.manifest, [sink],
                          capture=capture)
    loop.start()
    time.sleep(0.2)
    assert sink.results == []  # nothing is judged without a trigger
    loop.apply_command(Command("trigger", part_id="plc-1"))
    deadline = time.monotonic() + 10
    while len(sink.results) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    answer = loop.apply_command(Command("set_threshold", value=0.3))  # the spot scores 0.12: passes now
    assert answer["threshold"] == 0.3
    loop.apply_command(Command("trigger", part_id="plc-2"))
    while len(sink.results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.apply_command(Command("set_sensitivity", value=0.8))  # effective threshold 0.3 * 0.2 / 0.8: rejects again
    loop.apply_command(Command("trigger", part_id="plc-3"))
    assert loop.wait(10)
    loop.stop()
    verdicts = [(r.part_id, r.verdict) for r in sink.results]
    assert verdicts == [("plc-1", Verdict.FAIL), ("plc-2", Verdict.PASS), ("plc-3", Verdict.FAIL)]


def test_every_command_kind_is_a_loop_method_taking_its_argument():
    for kind, spec in COMMANDS.items():
        parameters = list(inspect.signature(getattr(InspectionLoop, kind)).parameters)[1:]  # without self
        assert parameters == ([spec.argument] if spec.argument else []), kind


def test_trigger_needs_the_trigger_mode(engine, bundle):
    loop = InspectionLoop(DemoLine(parts=1, size=SIZE), engine, bundle.manifest, [])
    with pytest.raises(ValueError, match="trigger_source=mqtt"):
        loop.apply_command(Command("trigger", part_id="x"))


def test_roi_regions_come_back_in_frame_pixels(engine, bundle, tmp_path):
    frame = np.full((300, 400, 3), 128, np.uint8)
    part = PartMaker(size=SIZE, seed=4).make("spot")
    frame[100:100 + SIZE, 200:200 + SIZE] = part.image
    source = FolderSource(_write(frame, tmp_path), CaptureSettings())
    results, _ = _run(source, engine, bundle, roi=RoiSettings(x=200, y=100, width=SIZE, height=SIZE))
    (result,) = results
    assert result.verdict == Verdict.FAIL and result.regions
    ys, xs = np.nonzero(part.mask)
    region = result.regions[0]
    assert region.x <= 200 + xs.mean() <= region.x + region.width
    assert region.y <= 100 + ys.mean() <= region.y + region.height
    assert result.mask.shape == (300, 400) and result.mask[:100].max() == 0


def _write(frame, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "frame.png"), frame)
    return folder


def test_a_broken_sink_does_not_stop_the_others(engine, bundle):
    class Broken:
        def handle(self, result):
            raise OSError("disk full")

        def close(self):
            pass

    good = CollectingSink()
    loop = InspectionLoop(DemoLine(parts=3, size=SIZE), engine, bundle.manifest, [Broken(), good])
    stats = loop.run()
    assert len(good.results) == 3 and stats["counts"]["sink_errors"] == 3


def test_a_crashing_stage_stops_the_loop_and_says_why(engine, bundle):
    class Closing(CollectingSink):
        closed = False

        def close(self):
            self.closed = True

    sink = Closing()
    loop = InspectionLoop(DemoLine(parts=50, size=SIZE), engine, bundle.manifest, [sink])
    loop.judge = None  # a bug in the decision stage (not guarded per part, unlike engine errors)
    stats = loop.run()
    assert stats["failure"] and "decision" in stats["failure"] and sink.closed


def test_latency_window_keeps_the_latest_samples_in_fixed_memory():
    from edge_inspector.pipeline.stats import WINDOW, LoopStats

    stats = LoopStats()
    for i in range(WINDOW + 500):
        stats.record("inference", float(i))
    summary = stats.latency()["inference"]
    assert summary["n"] == WINDOW and summary["mean"] == (500 + WINDOW + 499) / 2  # the oldest 500 are gone
    assert set(stats.latency()) == {"inference"}


def test_heap_settings_are_applied_unless_the_environment_sets_them(monkeypatch):
    import platform

    from edge_inspector.pipeline.heap import settle_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the malloc settings are glibc's; this system has none to tune")
    assert settle_heap() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert settle_heap() is False  # an operator's own settings win
