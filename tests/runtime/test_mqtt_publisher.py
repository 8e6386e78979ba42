"""ResultPublisher against a real Mosquitto: the result schema on the wire, status, heartbeat, commands, config errors."""

from __future__ import annotations

import json
import re

import pytest

from edge_inspector.config import MqttSettings, TlsSettings
from edge_inspector.errors import ConfigError
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.publish.spool import SpoolError
from edge_inspector.results import Verdict
from tests.fixtures.broker import SKIP_REASON, MosquittoBroker, Subscriber, find_mosquitto
from tests.fixtures.inspection_results import assert_message_matches, make_result
from tests.fixtures.tls_certs import make_secure_listener

STATION = "line-a"


def settings_for(broker, tmp_path, **overrides) -> MqttSettings:
    return MqttSettings(url=broker.url, topic_prefix="test", spool_dir=str(tmp_path / "spool"), **overrides)


@pytest.fixture
def topics():
    return Topics.for_station("test", STATION)


def test_results_arrive_in_order_with_every_schema_field(mosquitto, tmp_path, topics):
    subscriber = Subscriber(mosquitto, ["test/#"])
    publisher = ResultPublisher(settings_for(mosquitto, tmp_path, include_mask=True), STATION, model_id="m-7")
    publisher.start()
    verdicts = [Verdict.PASS, Verdict.FAIL, Verdict.UNKNOWN, Verdict.PASS, Verdict.FAIL] * 6
    results = [make_result(i, verdict, with_images=True) for i, verdict in enumerate(verdicts)]
    sequences = [publisher.publish(result) for result in results]
    assert sequences == list(range(1, 31)) and [r.sequence for r in results] == sequences
    assert subscriber.wait_for(lambda s: len(s.on(topics.result)) == 30), "results did not arrive"
    assert publisher.flush(10) and publisher.pending == 0

    docs = [json.loads(payload) for payload in subscriber.on(topics.result)]
    assert [d["sequence"] for d in docs] == sequences
    for doc, result in zip(docs, results):
        assert_message_matches(doc, result, STATION)
        assert ("mask_png_base64" in doc) == (result.verdict != Verdict.PASS)
    health = publisher.health
    assert health.connected and health.acked == 30 and health.last_sequence == 30 and health.in_flight == 0

    # The status is retained: a client that subscribes later still learns the station is online.
    late = Subscriber(mosquitto, [topics.status])
    assert late.wait_for(lambda s: s.messages)
    topic, payload, retained = late.messages[0]
    assert retained and json.loads(payload) | {"ts": None} == {
        "state": "online", "station": STATION, "model_id": "m-7", "version": "0.1.0", "problems": [], "ts": None}
    late.close()

    publisher.stop()
    statuses = [json.loads(p)["state"] for p in subscriber.on(topics.status)]
    assert statuses == ["online", "offline"]
    subscriber.close()


def test_heartbeat_reports_counters_and_extra_fields(mosquitto, tmp_path, topics):
    subscriber = Subscriber(mosquitto, [topics.heartbeat])
    publisher = ResultPublisher(settings_for(mosquitto, tmp_path, heartbeat_s=0.2), STATION,
                                heartbeat_extra=lambda: {"frames": 123})
    publisher.start()
    publisher.publish(make_result(0, Verdict.FAIL))
    assert subscriber.wait_for(lambda s: any(json.loads(p)["acked"] == 1 for p in s.on(topics.heartbeat)))
    beat = json.loads(subscriber.on(topics.heartbeat)[-1])
    assert beat["station"] == STATION and beat["frames"] == 123 and beat["last_sequence"] == 1
    assert {"ts", "uptime_s", "pending", "dropped_pass", "disconnects", "commands"} <= set(beat)
    publisher.stop()
    subscriber.close()


def wait_until_subscribed(subscriber: Subscriber, topics: Topics) -> None:
    """The publisher subscribes to its command topic before it announces 'online', and the broker handles one
    client's packets in order, so once 'online' arrives, commands sent now will be heard."""
    assert subscriber.wait_for(lambda s: s.on(topics.status), timeout=10)


def test_commands_reach_the_callback_and_bad_ones_get_errors(mosquitto, tmp_path, topics):
    received = []

    def on_command(command):
        received.append(command)
        if command.kind == "set_threshold" and command.value > 100:
            raise ValueError("threshold 200.0 is above the model's score range")
        if command.kind == "resume":
            raise RuntimeError("camera is gone")
        return {"applied": command.kind}

    subscriber = Subscriber(mosquitto, [topics.cmd_response, topics.result, topics.status])
    publisher = ResultPublisher(settings_for(mosquitto, tmp_path), STATION, on_command=on_command)
    publisher.start()
    wait_until_subscribed(subscriber, topics)
    requests = [
        b'{"kind": "set_threshold", "value": 0.5, "id": "a"}',
        b'{"kind": "trigger", "part_id": "P-1", "id": "b"}',
        b"{oops",
        b'{"kind": "explode", "id": "c"}',
        b'{"kind": "set_sensitivity", "value": 7, "id": "d"}',
        b'{"kind": "set_threshold", "value": 200, "id": "e"}',
        b'{"kind": "resume", "id": "f"}',
        b'{"kind": "pause", "id": "g"}',
    ]
    for request in requests:
        subscriber.publish(topics.cmd, request)
    assert subscriber.wait_for(lambda s: len(s.on(topics.cmd_response)) == len(requests))
    answers = [json.loads(p) for p in subscriber.on(topics.cmd_response)]
    assert answers[0] == {"id": "a", "kind": "set_threshold", "ok": True, "result": {"applied": "set_threshold"}}
    assert answers[1] == {"id": "b", "kind": "trigger", "ok": True, "result": {"applied": "trigger"}}
    assert not answers[2]["ok"] and answers[2]["error"].startswith("malformed JSON")
    assert answers[3]["id"] == "c" and "unknown kind 'explode'" in answers[3]["error"]
    assert answers[4]["kind"] == "set_sensitivity" and "within [0, 1]" in answers[4]["error"]
    assert answers[5] == {"id": "e", "kind": "set_threshold", "ok": False,
                          "error": "threshold 200.0 is above the model's score range"}
    assert answers[6]["error"] == "command failed: RuntimeError: camera is gone"
    assert answers[7]["ok"] and answers[7]["kind"] == "pause"
    # Only valid commands reached the callback, with their values.
    assert [(c.kind, c.value, c.part_id) for c in received] == [
        ("set_threshold", 0.5, None), ("trigger", None, "P-1"), ("set_threshold", 200.0, None),
        ("resume", None, None), ("pause", None, None)]
    # Still alive and publishing after all that.
    publisher.publish(make_result(1, Verdict.FAIL))
    assert subscriber.wait_for(lambda s: len(s.on(topics.result)) == 1)
    assert publisher.health.commands == len(requests)
    publisher.stop()
    subscriber.close()


def test_commands_without_a_handler_are_refused(mosquitto, tmp_path, topics):
    subscriber = Subscriber(mosquitto, [topics.cmd_response, topics.status])
    publisher = ResultPublisher(settings_for(mosquitto, tmp_path), STATION)
    publisher.start()
    wait_until_subscribed(subscriber, topics)
    subscriber.publish(topics.cmd, b'{"kind": "pause"}')
    assert subscriber.wait_for(lambda s: s.on(topics.cmd_response))
    assert json.loads(subscriber.on(topics.cmd_response)[0])["error"] == "this station does not accept commands"
    publisher.stop()
    subscriber.close()


def test_tls_and_credential_errors_are_clear(tmp_path, monkeypatch):
    spool = str(tmp_path / "spool")
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ConfigError, match=rf"mqtt.tls.ca_file: file not found: {missing}"):
        ResultPublisher(MqttSettings(url="mqtts://127.0.0.1", spool_dir=spool, tls=TlsSettings(ca_file=str(missing))),
                        STATION)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        ResultPublisher(MqttSettings(url="mqtts://127.0.0.1", spool_dir=spool, tls=TlsSettings(ca_file=str(garbage))),
                        STATION)
    with pytest.raises(ConfigError, match="use mqtts://"):
        ResultPublisher(MqttSettings(url="mqtt://127.0.0.1", spool_dir=spool, tls=TlsSettings(ca_file=str(garbage))),
                        STATION)
    with pytest.raises(ConfigError, match="key_file is set without"):
        ResultPublisher(MqttSettings(url="mqtts://127.0.0.1", spool_dir=spool, tls=TlsSettings(key_file=str(garbage))),
                        STATION)
    monkeypatch.setenv("EDGE_INSPECTOR_MQTT_PASSWORD", "secret")
    monkeypatch.delenv("EDGE_INSPECTOR_MQTT_USERNAME", raising=False)
    with pytest.raises(ConfigError, match=r"\$EDGE_INSPECTOR_MQTT_USERNAME"):
        ResultPublisher(MqttSettings(spool_dir=spool), STATION)
    with pytest.raises(ConfigError, match="station 'line#1' cannot be used in MQTT topics"):
        ResultPublisher(MqttSettings(spool_dir=spool), "line#1")
    with pytest.raises(ConfigError, match=re.escape("mqtt.topic_prefix 'plant/+' cannot hold")):
        ResultPublisher(MqttSettings(spool_dir=spool, topic_prefix="plant/+"), STATION)
    with pytest.raises(ConfigError, match="invalid port"):
        ResultPublisher(MqttSettings(url="mqtt://127.0.0.1:99999", spool_dir=spool), STATION)


def test_tls_with_client_certificate_and_password_from_the_environment(tmp_path, monkeypatch):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(SKIP_REASON)
    certs = tmp_path / "certs"
    broker = MosquittoBroker(tmp_path / "broker", binary, secure=make_secure_listener(certs, "inspector", "s3cret"))
    broker.start()
    try:
        subscriber = Subscriber(broker, [f"test/{STATION}/#"])  # on the plain listener
        tls = TlsSettings(ca_file=str(certs / "ca.pem"), cert_file=str(certs / "client.pem"),
                          key_file=str(certs / "client.key"))
        monkeypatch.setenv("EDGE_INSPECTOR_MQTT_USERNAME", "inspector")
        monkeypatch.setenv("EDGE_INSPECTOR_MQTT_PASSWORD", "wrong")
        refused = ResultPublisher(MqttSettings(url=broker.secure_url, topic_prefix="test", tls=tls,
                                               spool_dir=str(tmp_path / "spool")), STATION)
        refused.start()
        refused.publish(make_result(0, Verdict.FAIL))
        assert subscriber.wait_for(lambda s: "refused" in (refused.health.last_error or ""), timeout=10)
        assert not refused.connected and refused.pending == 1  # kept for when the credentials are fixed
        refused.stop()

        monkeypatch.setenv("EDGE_INSPECTOR_MQTT_PASSWORD", "s3cret")
        publisher = ResultPublisher(MqttSettings(url=broker.secure_url, topic_prefix="test", tls=tls,
                                                 spool_dir=str(tmp_path / "spool")), STATION)
        publisher.start()
        publisher.publish(make_result(1, Verdict.PASS))
        assert subscriber.wait_for(lambda s: len(s.on(f"test/{STATION}/result")) == 2, timeout=20), broker.log_text()
        assert [json.loads(p)["sequence"] for p in subscriber.on(f"test/{STATION}/result")] == [1, 2]
        publisher.stop()
        subscriber.close()
    finally:
        broker.stop()


def test_status_fields_follow_the_line_and_stop_is_final(mosquitto, tmp_path, topics):
    subscriber = Subscriber(mosquitto, [topics.status])
    publisher = ResultPublisher(settings_for(mosquitto, tmp_path), STATION, model_id="m-1")
    publisher.start()
    wait_until_subscribed(subscriber, topics)
    publisher.set_status(paused=True)
    assert subscriber.wait_for(lambda s: len(s.on(topics.status)) == 2)
    assert json.loads(subscriber.on(topics.status)[1])["paused"] is True
    publisher.stop()
    assert subscriber.wait_for(lambda s: len(s.on(topics.status)) == 3)
    offline = json.loads(subscriber.on(topics.status)[2])
    assert offline["state"] == "offline" and offline["paused"] is True
    with pytest.raises(SpoolError, match="cannot read the result spool"):
        publisher.publish(make_result(0, Verdict.FAIL))
    subscriber.close()


def test_disabled_publisher_numbers_results_without_sending(tmp_path):
    settings = MqttSettings(enabled=False, url="mqtt://127.0.0.1:1", spool_dir=str(tmp_path / "spool"))
    publisher = ResultPublisher(settings, STATION)
    publisher.start()
    results = [make_result(i, Verdict.FAIL) for i in range(3)]
    assert [publisher.publish(r) for r in results] == [1, 2, 3] and results[2].sequence == 3
    assert publisher.pending == 0 and not publisher.connected
    publisher.stop()
