"""Capture: image folders (sorted, labelled, looping), video files through OpenCV, reopen with backoff,
the newest-frame reader, and the demo line with its ground truth."""

import threading
import time

import cv2
import numpy as np
import pytest

from edge_inspector.capture.camera import LatestFrameReader, ReopeningSource
from edge_inspector.capture.demo_line import DEFECT_KINDS, DemoLine, PartMaker, write_demo_dataset
from edge_inspector.capture.sources import FolderSource, VideoSource, folder_label, open_source
from edge_inspector.config import CaptureSettings
from edge_inspector.errors import SourceError


def _mvtec(root):
    for rel in ("test/good/001.png", "test/good/000.png", "test/crack/000.png", "ground_truth/crack/000_mask.png"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((20, 30), len(rel), np.uint8))
    (root / "test/good/broken.png").write_bytes(b"not a png")
    return root


def _video(path, frames=6, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_folder_is_sorted_labelled_skips_masks_and_keeps_unreadable_files_as_errors(tmp_path):
    source = open_source(_mvtec(tmp_path / "cat"))
    assert isinstance(source, FolderSource)
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    names = ["test/crack/000.png", "test/good/000.png", "test/good/001.png", "test/good/broken.png"]
    assert [f.name for f in frames] == names
    assert [f.label for f in frames] == [True, False, False, False]
    assert frames[0].image.shape == (20, 30, 3) and [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.error is None for f in frames] == [True, True, True, False]
    assert frames[3].image is None and "broken.png is not an image" in frames[3].error


def test_folder_loops_when_asked(tmp_path):
    source = FolderSource(_mvtec(tmp_path / "cat"), CaptureSettings(loop=True))
    source.open()
    names = [source.read().name for _ in range(6)]
    assert names[4] == names[0] and names[5] == names[1]


def test_folder_labels():
    from pathlib import Path

    assert folder_label(Path("test/good/a.png")) is False
    assert folder_label(Path("test/scratch/a.png")) is True
    assert folder_label(Path("a.png")) is None


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="Video file not found"):
        open_source(str(tmp_path / "missing.mp4")).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="No images"):
        open_source(tmp_path / "empty").open()


def test_video_file_reads_every_frame_then_ends(tmp_path):
    source = open_source(str(_video(tmp_path / "clip.avi")))
    assert isinstance(source, VideoSource) and not source.live
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert len(frames) == 6 and frames[0].image.shape == (48, 64, 3)


def test_camera_and_stream_specs_are_live():
    assert VideoSource("0").live and VideoSource("0").camera_index == 0
    assert VideoSource("rtsp://cam.local/stream").live


def test_a_live_source_that_stops_is_reopened_and_reported(tmp_path):
    clip = _video(tmp_path / "clip.avi", frames=3)
    camera = VideoSource(str(clip))
    camera.live = True  # a file that "stops delivering" after 3 frames stands in for a camera that drops out
    reopening = ReopeningSource(camera, backoff_s=(0.01, 0.02))
    reopening.open()
    frames = [reopening.read() for _ in range(7)]
    assert all(f is not None for f in frames)
    assert reopening.reopens == 2 and reopening.status == "ok" and reopening.failures == 2
    reopening.close()


def test_reopen_backs_off_while_the_camera_stays_away(tmp_path):
    clip = _video(tmp_path / "clip.avi", frames=1)
    camera = VideoSource(str(clip))
    camera.live = True
    stop = threading.Event()
    reopening = ReopeningSource(camera, backoff_s=(0.01, 0.04), stop=stop)
    reopening.open()
    assert reopening.read() is not None
    clip.unlink()  # the camera is gone: every reopen fails until it comes back
    camera.spec = str(tmp_path / "gone.avi")
    reader = threading.Thread(target=reopening.read)
    reader.start()
    time.sleep(0.3)
    assert reopening.status == "reconnecting"
    _video(tmp_path / "gone.avi", frames=2)  # back again
    reader.join(timeout=5)
    assert not reader.is_alive() and reopening.reopens == 1 and reopening.status == "ok"


def test_newest_frame_reader_counts_what_it_drops():
    line = DemoLine(parts=40, size=64)
    reader = LatestFrameReader(ReopeningSource(line))
    reader.open()
    taken = []
    while (frame := reader.read(timeout=5)) is not None:
        taken.append(frame.index)
        time.sleep(0.01)  # a slow judge
    assert taken == sorted(taken) and len(taken) < 40
    assert reader.dropped + len(taken) == 40
    reader.close()


def test_demo_line_is_seeded_and_carries_ground_truth():
    def run(seed):
        line = DemoLine(parts=30, defect_rate=0.5, size=96, seed=seed)
        line.open()
        frames = [line.read() for _ in range(30)]
        assert line.read() is None
        return frames

    first, again = run(3), run(3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    labels = [f.label for f in first]
    assert 5 < sum(labels) < 25
    assert all(("-" in f.name.removeprefix("part-")) == f.label for f in first)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_have_exact_masks_and_change_the_surface(kind):
    good = PartMaker(size=96, seed=5).make(None)
    bad = PartMaker(size=96, seed=5).make(kind)
    assert good.mask.max() == 0 and good.defect is None
    assert bad.mask.sum() > 0 and bad.defect == kind
    changed = np.abs(good.image.astype(int) - bad.image.astype(int)).max(axis=2) > 10
    assert changed[bad.mask > 0].mean() > 0.5 and changed[bad.mask == 0].mean() < 0.01


def test_demo_dataset_is_written_in_mvtec_layout(tmp_path):
    category = write_demo_dataset(tmp_path, train_good=3, test_good=2, test_defect_each=1, size=64)
    assert len(list((category / "train/good").glob("*.png"))) == 3
    assert len(list((category / "test/good").glob("*.png"))) == 2
    for kind in DEFECT_KINDS:
        assert (category / "test" / kind / "000.png").is_file()
        mask = cv2.imread(str(category / "ground_truth" / kind / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (64, 64) and mask.max() == 255


def test_an_unreachable_stream_is_a_clear_error():
    source = VideoSource("rtsp://127.0.0.1:1/line", CaptureSettings(read_timeout_s=1))
    with pytest.raises(SourceError, match="Cannot open rtsp://127.0.0.1:1/line"):
        source.open()
