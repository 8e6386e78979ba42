"""The line with a real Mosquitto: results arrive, and an MQTT threshold command changes verdicts."""

import json
import threading

import cv2

from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.config import load_run_config
from edge_inspector.cli.run import run_line
from edge_inspector.publish.mqtt import Topics
from tests.fixtures.broker import Subscriber
from tests.fixtures.bundles import make_tiny_bundle

STATION = "cell-7"


def test_threshold_command_over_mqtt_changes_verdicts(mosquitto, tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                              local=15, smooth=7)
    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "spot.png"), PartMaker(size=128, seed=4).make("spot").image)
    config = load_run_config(None, [
        f"station={STATION}", f"model={bundle.path}", f"source={folder}", "capture.loop=true",
        "capture.mode=triggered", "capture.trigger_source=mqtt", "capture.max_frames=2",
        f"mqtt.url={mosquitto.url}", f"mqtt.spool_dir={tmp_path / 'spool'}", "archive.enabled=false",
    ])
    topics = Topics.for_station(config.mqtt.topic_prefix, STATION)
    subscriber = Subscriber(mosquitto, [topics.result, topics.cmd_response, topics.status])
    line = threading.Thread(target=run_line, args=(config,), kwargs={"quiet": True}, daemon=True)
    line.start()
    try:
        assert subscriber.wait_for(lambda s: any(b'"online"' in p for p in s.on(topics.status)))
        subscriber.publish(topics.cmd, json.dumps({"kind": "trigger", "part_id": "A-1"}))
        assert subscriber.wait_for(lambda s: len(s.on(topics.result)) == 1)
        subscriber.publish(topics.cmd, json.dumps({"kind": "set_threshold", "value": 0.3, "id": "r1"}))
        assert subscriber.wait_for(lambda s: len(s.on(topics.cmd_response)) == 2)  # the trigger's, then this one
        answer = json.loads(subscriber.on(topics.cmd_response)[1])
        assert answer["ok"] and answer["id"] == "r1" and answer["result"]["threshold"] == 0.3  # the spot scores 0.12
        assert subscriber.wait_for(lambda s: any(b'"threshold": 0.3' in p for p in s.on(topics.status)))
        subscriber.publish(topics.cmd, json.dumps({"kind": "trigger", "part_id": "A-2"}))
        assert subscriber.wait_for(lambda s: len(s.on(topics.result)) == 2)
        line.join(timeout=20)
        assert not line.is_alive()
    finally:
        subscriber.close()
    first, second = (json.loads(p) for p in subscriber.on(topics.result))
    assert (first["part_id"], first["verdict"]) == ("A-1", "FAIL")
    assert (second["part_id"], second["verdict"]) == ("A-2", "PASS")
    assert second["sequence"] == first["sequence"] + 1


def test_demo_publishes_when_a_broker_answers(mosquitto, tmp_path, monkeypatch, capsys):
    from edge_inspector import cli

    monkeypatch.chdir(tmp_path)  # nothing lands here: the spool goes under the state directory (XDG_STATE_HOME)
    topics = Topics.for_station("edge-inspector", "demo")
    subscriber = Subscriber(mosquitto, [topics.result])
    try:
        code = cli.main(["demo", "--parts", "5", "--interval", "0", "--mqtt", mosquitto.url])
        assert code == 0 and f"publishing to {mosquitto.url}" in capsys.readouterr().out
        assert subscriber.wait_for(lambda s: len(s.on(topics.result)) == 5)
    finally:
        subscriber.close()
    messages = [json.loads(p) for p in subscriber.on(topics.result)]
    assert [m["sequence"] for m in messages] == sorted(m["sequence"] for m in messages)
    assert {m["verdict"] for m in messages} <= {"PASS", "FAIL"}
