"""Issue 15, item 6 (and the read-only part of 7): the frame archive and the spool on real, troubled file systems.

The archive works with MQTT off (results still get sequence numbers), keeps room on a full disk by deleting PASS
frames before any FAIL (a PASS never displaces a FAIL), and a read-only spool or archive folder at start is one
clear error, not a traceback.
"""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np

from edge_inspector import cli
from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.cli.run import run_line
from edge_inspector.config import ArchiveSettings, load_run_config
from edge_inspector.publish.archive import Archive
from edge_inspector.results import Verdict
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.inspection_results import make_result
from tests.fixtures.small_fs import small_fs  # noqa: F401  (fixture)


def parts_folder(tmp_path, defects=("spot",), good=2):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(good):
        cv2.imwrite(str(folder / f"good-{i}.png"), PartMaker(size=128, seed=i).make(None).image)
    for kind in defects:
        cv2.imwrite(str(folder / f"{kind}.png"), PartMaker(size=128, seed=4).make(kind).image)
    return folder


def test_the_archive_works_with_mqtt_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sequence counter's spool goes to ./var/spool
    bundle = make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                              local=15, smooth=7)
    config = load_run_config(None, [f"model={bundle.path}", f"source={parts_folder(tmp_path)}",
                                    "mqtt.enabled=false", f"archive.dir={tmp_path / 'archive'}",
                                    "archive.pass_sample_rate=1", "engine.intra_op_threads=1"])
    stats = run_line(config, quiet=True)
    docs = sorted((json.loads(p.read_text()) for p in (tmp_path / "archive").rglob("*.json")),
                  key=lambda doc: doc["sequence"])
    assert stats["counts"]["judged"] == 3 and stats["counts"].get("sink_errors", 0) == 0
    assert [doc["sequence"] for doc in docs] == [1, 2, 3]
    assert sorted(doc["verdict"] for doc in docs) == ["FAIL", "PASS", "PASS"]
    # Sequence numbers go on across runs, as they do with MQTT on.
    run_line(config, quiet=True)
    assert max(json.loads(p.read_text())["sequence"] for p in (tmp_path / "archive").rglob("*.json")) == 6


def big_result(index: int, verdict: Verdict):
    """A result with a 256 x 256 noise frame (a PNG of ~200 KB: a few fill a small disk)."""
    result = make_result(index, verdict, with_images=True)
    frame = np.random.default_rng(index).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    return replace(result, sequence=index + 1, decided_at=result.decided_at + index * 0.001, frame=frame,
                   overlay=frame.copy(), mask=np.zeros((256, 256), np.uint8))


def groups(folder, verdict: str) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"*_{verdict}_*.json"))


def test_a_full_archive_disk_deletes_pass_frames_before_any_fail(small_fs):
    fs = small_fs(3 * 1024)
    archive = Archive(ArchiveSettings(dir=str(fs.path / "archive"), max_mb=1000, min_free_mb=0, pass_sample_rate=1))
    for i in range(6):
        archive.add(big_result(i, Verdict.PASS))
    archive.flush()
    assert len(groups(fs.path, "PASS")) == 6
    for i in range(6, 26):
        archive.add(big_result(i, Verdict.FAIL))
    archive.flush()
    fails = groups(fs.path, "FAIL")
    assert archive.errors == 0, "a FAIL frame could not be archived"
    assert groups(fs.path, "PASS") == [], "PASS frames stayed while FAIL frames needed the room"
    assert len(fails) >= 8  # the disk holds ~11 groups
    assert all(f"_{seq:08d}_FAIL_" in " ".join(fails) for seq in range(27 - len(fails), 27))  # the newest ones
    for i in range(26, 29):  # the disk is full of FAIL frames: a PASS is not archived rather than evict one
        archive.add(big_result(i, Verdict.PASS))
    archive.flush()
    assert groups(fs.path, "FAIL") == fails and archive.errors == 0
    archive.close()


def test_read_only_spool_and_archive_folders_at_start_are_clear_errors(small_fs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    read_only = small_fs(1024, read_only=True)
    bundle = make_tiny_bundle(tmp_path / "bundle", 64, 64)
    folder = parts_folder(tmp_path, good=1)
    common = ["run", "--source", str(folder), "--model", str(bundle.path), "--quiet"]
    code = cli.main([*common, "--mqtt", "mqtt://127.0.0.1:1", f"mqtt.spool_dir={read_only.path}/spool",
                     "archive.enabled=false"])
    err = capsys.readouterr().err
    assert code == 2 and "mqtt.spool_dir must be a writable folder" in err and "Read-only file system" in err, err
    assert "Traceback" not in err
    code = cli.main([*common, "mqtt.enabled=false", f"archive.dir={read_only.path}/archive"])
    err = capsys.readouterr().err
    assert code == 2 and "archive.dir: cannot write to" in err and "Read-only file system" in err, err
    assert "Traceback" not in err
