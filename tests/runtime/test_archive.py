"""The frame archive: what it keeps, what it deletes first under the cap, and what it finds after a restart."""

from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from edge_inspector.config import ArchiveSettings
from edge_inspector.publish.archive import QUEUE_SIZE, Archive
from edge_inspector.publish.schema import ResultMessage
from edge_inspector.results import Verdict
from tests.fixtures.inspection_results import make_result


def archived(index: int, verdict: Verdict):
    result = make_result(index, verdict, with_images=True)
    result.sequence = index + 1
    result.decided_at += index * 0.001  # distinct, increasing decision times
    return result


def stems(archive_dir):
    return sorted(p.name[:-5] for p in archive_dir.rglob("*.json"))


def test_fail_frames_are_stored_with_original_overlay_and_json(tmp_path):
    archive = Archive(ArchiveSettings(dir=str(tmp_path / "a"), pass_sample_rate=0.0), station="s1")
    result = archived(0, Verdict.FAIL)
    json_path = archive.add(result)
    archive.flush()
    assert json_path is not None and json_path.is_file()
    doc = json.loads(json_path.read_text())
    ResultMessage.model_validate(doc)
    assert doc["verdict"] == "FAIL" and doc["station"] == "s1" and doc["mask_png_base64"]
    stem = json_path.name[: -len(".json")]
    frame = cv2.imread(str(json_path.with_name(f"{stem}_frame.png")), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(frame, result.frame)  # lossless original
    overlay = cv2.imread(str(json_path.with_name(f"{stem}_overlay.jpg")))
    assert overlay.shape == result.overlay.shape
    assert archive.counts() == {"pass": 0, "fail": 1}
    assert archive.size_bytes == sum(p.stat().st_size for p in json_path.parent.iterdir())
    # UNKNOWN (fail-safe) is a reject too: always archived.
    assert archive.add(archived(1, Verdict.UNKNOWN)) is not None
    assert archive.add(archived(2, Verdict.PASS)) is None
    archive.close()
    assert archive.counts() == {"pass": 0, "fail": 2}
    with pytest.raises(RuntimeError, match="after close"):
        archive.add(archived(3, Verdict.FAIL))


def test_pass_frames_are_sampled_at_the_configured_rate(tmp_path):
    archive = Archive(ArchiveSettings(dir=str(tmp_path / "a"), pass_sample_rate=0.25))
    kept = [archive.add(archived(i, Verdict.PASS)) is not None for i in range(40)]
    archive.flush()
    assert sum(kept) == 10
    assert archive.counts() == {"pass": 10, "fail": 0}


def test_cap_deletes_oldest_pass_first_then_oldest_fail(tmp_path):
    folder = tmp_path / "a"
    probe = Archive(ArchiveSettings(dir=str(tmp_path / "probe"), pass_sample_rate=1.0))
    probe.add(archived(0, Verdict.FAIL))
    probe.close()
    group_bytes = probe.size_bytes
    # Room for about six groups.
    archive = Archive(ArchiveSettings(dir=str(folder), pass_sample_rate=1.0, max_mb=6.5 * group_bytes / 2**20))
    verdicts = [Verdict.PASS, Verdict.FAIL, Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.PASS, Verdict.PASS,
                Verdict.FAIL]
    for i, verdict in enumerate(verdicts):
        archive.add(archived(i, verdict))
    archive.flush()
    kept = stems(folder)
    assert archive.size_bytes <= archive.max_bytes
    # The two oldest PASS (indices 0 and 2) went; every FAIL is still there.
    assert [s.split("_")[1] for s in kept] == ["00000002", "00000004", "00000005", "00000006", "00000007",
                                              "00000008"]
    # Only FAILs arriving: the PASS go first, then the oldest FAIL.
    for i in range(8, 14):
        archive.add(archived(i, Verdict.FAIL))
    archive.close()
    kept = stems(folder)
    assert all("_FAIL_" in s for s in kept)
    assert [int(s.split("_")[1]) for s in kept] == list(range(9, 15))
    assert archive.deleted == 8
    # Nothing but our files is left behind (no empty groups, no temp files).
    assert sorted(p.suffix for p in folder.rglob("*") if p.is_file()) == sorted([".jpg", ".json", ".png"] * 6)


def test_restart_indexes_old_groups_and_removes_interrupted_ones(tmp_path):
    folder = tmp_path / "a"
    settings = ArchiveSettings(dir=str(folder), pass_sample_rate=1.0)
    first = Archive(settings)
    for i in range(4):
        first.add(archived(i, Verdict.FAIL if i % 2 else Verdict.PASS))
    first.close()
    day = next(p for p in folder.iterdir() if p.is_dir())
    # A write cut short by a crash: images without their JSON, and a temp file.
    orphan = "235959000000_00000099_FAIL_part-x"
    (day / f"{orphan}_frame.png").write_bytes(b"partial")
    (day / f".{orphan}.json.tmp").write_bytes(b"{")
    (day / "operator-notes.txt").write_text("not ours")

    second = Archive(settings)
    assert second.counts() == {"pass": 2, "fail": 2}
    assert second.size_bytes == first.size_bytes
    assert not (day / f"{orphan}_frame.png").exists() and not (day / f".{orphan}.json.tmp").exists()
    assert (day / "operator-notes.txt").exists()


def test_disabled_archive_writes_nothing(tmp_path):
    archive = Archive(ArchiveSettings(enabled=False, dir=str(tmp_path / "a")))
    assert archive.add(archived(0, Verdict.FAIL)) is None
    assert not (tmp_path / "a").exists()


def test_slow_writer_skips_sampled_pass_but_never_a_fail(tmp_path):
    archive = Archive(ArchiveSettings(dir=str(tmp_path / "a"), pass_sample_rate=1.0))
    gate, writing = threading.Event(), threading.Event()
    real_write = archive._write_image

    def slow_disk(path, image):  # the real write, once the "disk" lets it through
        writing.set()
        gate.wait()
        real_write(path, image)

    archive._write_image = slow_disk
    # one record in the writer's hands first, so the queue's state below does not depend on thread timing
    kept = [archive.add(archived(0, Verdict.PASS))]
    assert writing.wait(10)
    kept += [archive.add(archived(i, Verdict.PASS)) for i in range(1, QUEUE_SIZE + 6)]
    assert archive.skipped_busy == 5 and kept.count(None) == 5
    failed = []
    writer = threading.Thread(target=lambda: failed.append(archive.add(archived(99, Verdict.FAIL))))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()  # the FAIL waits for room instead of being skipped
    gate.set()
    writer.join(30)
    archive.close()
    assert failed[0] is not None and failed[0].is_file()
    assert archive.counts()["fail"] == 1


def test_writer_survives_a_bad_frame_and_archives_copies(tmp_path):
    archive = Archive(ArchiveSettings(dir=str(tmp_path / "a"), pass_sample_rate=0.0))
    bad = archived(0, Verdict.FAIL)
    bad.frame = np.zeros((4, 4, 7), np.uint8)  # 7 channels: no image format takes that
    assert archive.add(bad) is not None
    good = archived(1, Verdict.FAIL)
    original = good.frame.copy()
    path = archive.add(good)
    good.frame[:] = 0  # the capture source reuses its buffer
    archive.close()
    assert archive.errors == 1 and archive.counts() == {"pass": 0, "fail": 1}
    stem = path.name[: -len(".json")]
    np.testing.assert_array_equal(cv2.imread(str(path.with_name(f"{stem}_frame.png"))), original)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [f"{stem}.json", f"{stem}_frame.png", f"{stem}_overlay.jpg"])  # nothing left of the bad group
