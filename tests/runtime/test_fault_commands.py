"""Issue 15, items 3 and 4: commands are authorised and bounded; hostile sizes and characters go nowhere.

Against a real Mosquitto: a threshold command cannot switch inspection off (the bundle's command range), a station
with a command key takes only signed, fresh, unreplayed commands, a huge field is never echoed or logged whole, and
control characters cannot forge lines in the plain-text log.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import cv2
import pytest

from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.cli.run import run_line
from edge_inspector.config import MqttSettings, load_run_config
from edge_inspector.log import setup_logging
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from tests.fixtures.broker import Subscriber
from tests.fixtures.bundles import make_tiny_bundle

STATION = "cell-3"
TOPICS = Topics.for_station("test", STATION)
KEY = "operator-and-line-shared-secret"


def answers(subscriber: Subscriber) -> list[dict]:
    return [json.loads(p) for p in subscriber.on(TOPICS.cmd_response)]


def ask(subscriber: Subscriber, payload: bytes | str, timeout: float = 20) -> dict:
    """Send one command and return its answer."""
    count = len(subscriber.on(TOPICS.cmd_response))
    subscriber.publish(TOPICS.cmd, payload)
    assert subscriber.wait_for(lambda s: len(s.on(TOPICS.cmd_response)) > count, timeout=timeout)
    return answers(subscriber)[count]


def test_remote_commands_cannot_switch_inspection_off(mosquitto, tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                              local=15, smooth=7)
    folder = tmp_path / "parts"
    folder.mkdir()
    for seed in range(4):
        cv2.imwrite(str(folder / f"spot-{seed}.png"), PartMaker(size=128, seed=4 + seed).make("spot").image)
    config = load_run_config(None, [
        f"station={STATION}", f"model={bundle.path}", f"source={folder}", "capture.loop=true",
        "capture.mode=triggered", "capture.trigger_source=mqtt", "capture.max_frames=4", "mqtt.topic_prefix=test",
        f"mqtt.url={mosquitto.url}", f"mqtt.spool_dir={tmp_path / 'spool'}", "archive.enabled=false",
    ])
    subscriber = Subscriber(mosquitto, [TOPICS.result, TOPICS.cmd_response, TOPICS.status])
    line = threading.Thread(target=run_line, args=(config,), kwargs={"quiet": True}, daemon=True)
    line.start()
    try:
        assert subscriber.wait_for(lambda s: any(b'"online"' in p for p in s.on(TOPICS.status)))
        for kind, value in (("set_threshold", 1e300), ("set_threshold", 1e-300), ("set_threshold", 0.5),
                            ("set_sensitivity", 0.001), ("set_sensitivity", 0.999)):
            answer = ask(subscriber, json.dumps({"kind": kind, "value": value, "id": f"{kind}-{value}"}))
            assert not answer["ok"] and "outside what commands may set" in answer["error"], answer
        answer = ask(subscriber, json.dumps({"kind": "set_threshold", "value": 0.08}))  # within 0.25x-4x of 0.085
        assert answer["ok"] and answer["result"]["threshold"] == 0.08
        for i in range(4):
            subscriber.publish(TOPICS.cmd, json.dumps({"kind": "trigger", "part_id": f"P-{i}"}))
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.result)) == 4, timeout=30)
        line.join(timeout=20)
    finally:
        subscriber.close()
    verdicts = [json.loads(p)["verdict"] for p in subscriber.on(TOPICS.result)]
    assert verdicts == ["FAIL"] * 4  # every defective part is still rejected


@pytest.fixture
def signed_station(mosquitto, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_INSPECTOR_COMMAND_KEY", KEY)
    applied = []
    subscriber = Subscriber(mosquitto, [TOPICS.cmd_response, TOPICS.status])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION,
                                on_command=lambda command: applied.append(command.kind) or {"applied": command.kind})
    publisher.start()
    assert subscriber.wait_for(lambda s: s.on(TOPICS.status))
    yield subscriber, applied
    publisher.stop()
    subscriber.close()


def test_a_station_with_a_key_takes_only_signed_fresh_commands(signed_station):
    from edge_inspector.publish.command_auth import sign  # new in issue 15: imported here so the other tests run

    subscriber, applied = signed_station
    assert "requires signed commands" in ask(subscriber, json.dumps({"kind": "pause", "id": "anon"}))["error"]
    forged = sign({"kind": "pause", "id": "forged"}, "guessed-key")
    assert ask(subscriber, json.dumps(forged))["error"] == "unauthorised: bad command signature"
    tampered = sign({"kind": "set_sensitivity", "value": 0.6}, KEY) | {"value": 0.1}
    assert ask(subscriber, json.dumps(tampered))["error"] == "unauthorised: bad command signature"
    stale = sign({"kind": "pause", "id": "old"}, KEY, ts=time.time() - 3600)
    assert "timestamp" in ask(subscriber, json.dumps(stale))["error"]
    good = json.dumps(sign({"kind": "pause", "id": "op-1"}, KEY))
    assert ask(subscriber, good) == {"id": "op-1", "kind": "pause", "ok": True, "result": {"applied": "pause"}}
    assert "replay" in ask(subscriber, good)["error"]  # the same signed message, recorded and sent again
    assert applied == ["pause"]


def test_hostile_sizes_are_bounded_and_never_echoed_or_logged_whole(mosquitto, tmp_path, capsys):
    subscriber = Subscriber(mosquitto, [TOPICS.cmd_response, TOPICS.status])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION,
                                on_command=lambda command: {"applied": command.kind})
    logger = logging.getLogger("edge_inspector")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    setup_logging("INFO")  # the plain-text log, on the captured stderr
    publisher.start()
    try:
        assert subscriber.wait_for(lambda s: s.on(TOPICS.status))
        huge = "x" * 10_000_000
        big = "y" * 3000  # under the payload limit, over every field limit
        requests = [json.dumps({"kind": "pause", "id": huge}), json.dumps({"kind": huge}),
                    json.dumps({"kind": "trigger", "part_id": huge}), json.dumps({"kind": "pause", "id": big}),
                    json.dumps({"kind": big}), json.dumps({"kind": "trigger", "part_id": big}),
                    json.dumps({"kind": "pause", big: 1})]
        for request in requests:
            subscriber.publish(TOPICS.cmd, request)
        assert subscriber.wait_for(lambda s: len(s.on(TOPICS.cmd_response)) == len(requests), timeout=60)
        for payload in subscriber.on(TOPICS.cmd_response):
            doc = json.loads(payload)
            assert not doc["ok"] and len(payload) < 600, payload[:200]
            assert doc["id"] is None or len(doc["id"]) <= 128
        assert "command too large" in answers(subscriber)[0]["error"]
        assert "... (3002 characters)" in answers(subscriber)[4]["error"]
    finally:
        publisher.stop()
        subscriber.close()
        logger.handlers[:], logger.level, logger.propagate = saved
    log_text = capsys.readouterr().err
    assert len(log_text) < 10_000, f"the log grew by {len(log_text)} bytes for {len(requests)} hostile commands"


def test_control_characters_cannot_forge_log_lines(mosquitto, tmp_path, capsys):
    subscriber = Subscriber(mosquitto, [TOPICS.cmd_response, TOPICS.status])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION,
                                on_command=lambda command: {"applied": command.kind})
    logger = logging.getLogger("edge_inspector")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    setup_logging("INFO")
    forged = "\n2026-12-04T00:00:00 error edge_inspector.publish.mqtt FORGED line\r\x1b[2K"
    publisher.start()
    try:
        assert subscriber.wait_for(lambda s: s.on(TOPICS.status))
        for request in ({"kind": "pause", "id": "op" + forged}, {"kind": "pause" + forged},
                        {"kind": "trigger", "part_id": "P" + forged}, {"kind": "pause", "id": "ok-1"}):
            ask(subscriber, json.dumps(request))
        assert answers(subscriber)[0]["ok"] is False and answers(subscriber)[3]["ok"] is True
    finally:
        publisher.stop()
        subscriber.close()
        logger.handlers[:], logger.level, logger.propagate = saved
    lines = capsys.readouterr().err.splitlines()
    assert not any(line.startswith("2026-12-04T00:00:00") or "\x1b" in line or "\r" in line for line in lines)
    assert any("FORGED" in line for line in lines)  # it is in the log, as one escaped line
