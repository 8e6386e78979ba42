"""Issue 15, items 4, 5 and part of 7: every part gets a verdict, and a pause is a pause, against a real Mosquitto.

A folder with an empty file, a text file named .png, a truncated JPEG and a PNG whose header declares 20000 x 20000
pixels: each becomes a published result with the fail-safe verdict and an error saying why (the huge one refused
from its header, before decoding). Software triggers still waiting when the line is paused are answered with the
fail-safe verdict instead of being judged on a frame taken after the pause; new ones are refused while paused.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib

import cv2
import pytest

from edge_inspector.bundle.store import load_bundle
from edge_inspector.capture.demo_line import DemoLine, PartMaker
from edge_inspector.cli.run import run_line
from edge_inspector.config import CaptureSettings, EngineSettings, MqttSettings, load_run_config
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.pipeline.line import Line
from edge_inspector.pipeline.loop import InspectionLoop
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from tests.fixtures.broker import Subscriber
from tests.fixtures.bundles import make_tiny_bundle
from tests.runtime.test_ops_http import GatedEngine

STATION = "cell-4"
TOPICS = Topics.for_station("test", STATION)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels (its pixel data cut short): what a decompression bomb's header
    looks like, without making the test build gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)


@pytest.fixture
def bundle(tmp_path):
    return make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07, local=15,
                            smooth=7)


def test_every_file_in_a_folder_gets_a_verdict(mosquitto, tmp_path, bundle):
    folder = tmp_path / "parts"
    folder.mkdir()
    part = PartMaker(size=128, seed=1).make(None).image
    cv2.imwrite(str(folder / "a-good.png"), part)
    (folder / "b-empty.png").write_bytes(b"")
    (folder / "c-text.png").write_text("this is not an image\n")
    jpeg = cv2.imencode(".jpg", part)[1].tobytes()
    (folder / "d-truncated.jpg").write_bytes(jpeg[: int(len(jpeg) * 0.7)])
    (folder / "e-huge.png").write_bytes(png_header_only(20000, 20000))
    config = load_run_config(None, [
        f"station={STATION}", f"model={bundle.path}", f"source={folder}", "mqtt.topic_prefix=test",
        f"mqtt.url={mosquitto.url}", f"mqtt.spool_dir={tmp_path / 'spool'}", "archive.enabled=false",
        "engine.intra_op_threads=1",
    ])
    subscriber = Subscriber(mosquitto, [TOPICS.result])
    stats = run_line(config, quiet=True)
    assert subscriber.wait_for(lambda s: len(s.on(TOPICS.result)) == 5, timeout=30)
    subscriber.close()
    results = {doc["source"]: doc for doc in (json.loads(p) for p in subscriber.on(TOPICS.result))}
    assert sorted(results) == ["a-good.png", "b-empty.png", "c-text.png", "d-truncated.jpg", "e-huge.png"]
    assert results["a-good.png"]["error"] is None
    expected = {"b-empty.png": "is empty (0 bytes)", "c-text.png": "is not an image",
                "d-truncated.jpg": "truncated JPEG file (image file is truncated",
                "e-huge.png": "over capture.max_image_pixels (67 MP); not decoded"}
    for name, reason in expected.items():
        assert results[name]["verdict"] == "FAIL" and reason in results[name]["error"], results[name]
    assert stats["counts"]["judged"] == 5 and stats["counts"]["errors"] == 4


def test_pause_answers_pending_triggers_fail_safe_and_refuses_new_ones(mosquitto, tmp_path, bundle):
    loaded = load_bundle(bundle.path)
    engine = GatedEngine(OrtEngine(loaded, EngineSettings(intra_op_threads=1)))
    engine.gate.clear()  # inference blocks until the test opens the gate: triggers pile up behind it
    capture = CaptureSettings(mode="triggered", trigger_source="mqtt", queue_size=1)
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION)
    loop = InspectionLoop(DemoLine(parts=0, size=128, seed=3), engine, loaded.manifest, [publisher],
                          capture=capture, station=STATION)
    line = Line(loop, engine, publisher, None, STATION)
    publisher.on_command = line.apply_command
    subscriber = Subscriber(mosquitto, [TOPICS.result, TOPICS.cmd_response, TOPICS.status])
    runner = threading.Thread(target=line.run, daemon=True)
    runner.start()
    try:
        assert subscriber.wait_for(lambda s: any(b'"online"' in p for p in s.on(TOPICS.status)))
        for i in range(5):
            subscriber.publish(TOPICS.cmd, json.dumps({"kind": "trigger", "part_id": f"T{i}", "id": f"t{i}"}))
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.cmd_response)) == 5)
        # T0 is in the engine, T1 waits for it, T2 is captured and waits for room: T3 and T4 have no frame yet.
        assert subscriber.wait_for(lambda s: loop._triggers.qsize() == 2)
        subscriber.publish(TOPICS.cmd, json.dumps({"kind": "pause", "id": "p"}))
        subscriber.publish(TOPICS.cmd, json.dumps({"kind": "trigger", "part_id": "T5", "id": "t5"}))
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.cmd_response)) == 7)
        refused = json.loads(subscriber.on(TOPICS.cmd_response)[6])
        assert not refused["ok"] and "paused" in refused["error"]
        engine.gate.set()
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.result)) == 5, timeout=30)
        subscriber.publish(TOPICS.cmd, json.dumps({"kind": "resume"}))
        subscriber.publish(TOPICS.cmd, json.dumps({"kind": "trigger", "part_id": "T6"}))
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.result)) == 6, timeout=30)
    finally:
        loop.stop()
        runner.join(30)
        subscriber.close()
    results = {doc["part_id"]: doc for doc in (json.loads(p) for p in subscriber.on(TOPICS.result))}
    assert sorted(results) == ["T0", "T1", "T2", "T3", "T4", "T6"]  # T5 was refused, never judged
    for part in ("T0", "T1", "T2", "T6"):  # frames taken before the pause (or after the resume): judged
        assert results[part]["error"] is None and results[part]["score"] is not None
    for part in ("T3", "T4"):  # still waiting when the line was paused: answered, not judged on a later frame
        assert results[part]["verdict"] == "FAIL" and results[part]["score"] is None
        assert "paused before this trigger was served" in results[part]["error"]
