"""The shipped broker example (deploy/mosquitto/) enforces who may command a station, against a real Mosquitto.

Mosquitto answers a publish that the ACL refuses with a normal PUBACK and drops it, so every "cannot publish" check
sends the forbidden message first, then an allowed one on the same path, waits for the allowed one to arrive, and
only then asserts that the forbidden one never did.
"""

from __future__ import annotations

import json

from edge_inspector.config import MqttSettings, TlsSettings
from edge_inspector.results import Verdict
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from tests.fixtures.inspection_results import make_result
from tests.fixtures.plant_broker import plant_broker  # noqa: F401  (fixture)

PREFIX = "edge-inspector"
ONE = Topics.for_station(PREFIX, "station-1")
TWO = Topics.for_station(PREFIX, "station-2")


def command(request_id: str) -> str:
    return json.dumps({"kind": "set_threshold", "value": 1e300, "id": request_id})


def ids(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["id"] for p in payloads]


def test_anonymous_and_wrong_password_are_refused(plant_broker):
    anonymous = plant_broker.connect(None)
    wrong = plant_broker.connect("operator", password="not-the-password")
    unknown = plant_broker.connect("intruder", password="whatever")
    try:
        for client in (anonymous, wrong, unknown):
            assert client.refused and str(client.connect_reason) == "Not authorized"
    finally:
        for client in (anonymous, wrong, unknown):
            client.close()
    operator = plant_broker.connect("operator")  # the same path with the right password gets in
    try:
        assert not operator.refused
    finally:
        operator.close()


def test_only_the_operator_can_command_a_station(plant_broker):
    # station-1 also tries to listen to station-2's commands: Mosquitto grants the subscription but never delivers.
    station = plant_broker.connect("station-1", topics=(ONE.cmd, TWO.cmd))
    station_two = plant_broker.connect("station-2", topics=(TWO.cmd,))
    plc = plant_broker.connect("plc")
    operator = plant_broker.connect("operator")
    try:
        plc.publish(ONE.cmd, command("from-plc"))
        station_two.publish(ONE.cmd, command("from-station-2"))
        operator.publish(TWO.cmd, command("for-station-2"))
        operator.publish(ONE.cmd, command("from-operator"))
        assert station.wait_for(lambda c: "from-operator" in ids(c.on(ONE.cmd))), "operator's command never arrived"
        assert station_two.wait_for(lambda c: c.on(TWO.cmd)), "operator's command to station-2 never arrived"
        assert ids(station.on(ONE.cmd)) == ["from-operator"]
        assert station.on(TWO.cmd) == []
    finally:
        for client in (station, station_two, plc, operator):
            client.close()


def test_consumers_are_read_only_and_stations_write_only_their_own_topics(plant_broker):
    plc = plant_broker.connect("plc", topics=(f"{PREFIX}/#",))
    one = plant_broker.connect("station-1")
    two = plant_broker.connect("station-2")
    try:
        plc.publish(ONE.result, b'{"forged": "by plc"}')
        plc.publish(ONE.status, b'{"state": "forged by plc"}', retain=True)
        two.publish(ONE.result, b'{"forged": "by station-2"}')
        one.publish(ONE.result, b'{"real": "station-1"}')
        two.publish(TWO.result, b'{"real": "station-2"}')
        assert plc.wait_for(lambda c: c.on(ONE.result) and c.on(TWO.result)), "stations' own results never arrived"
        assert plc.on(ONE.result) == [b'{"real": "station-1"}']
        assert plc.on(TWO.result) == [b'{"real": "station-2"}']
        assert plc.on(ONE.status) == []
    finally:
        for client in (plc, one, two):
            client.close()


def test_edge_inspector_publishes_and_answers_commands_with_its_account(plant_broker, tmp_path, monkeypatch):
    """The real ResultPublisher, logged in as station-1 over TLS: results, retained status, command answers."""
    credentials = (plant_broker.env_dir / "station-1.env").read_text().splitlines()
    for line in credentials:  # exactly what compose's env_file gives the station's container
        key, value = line.split("=", 1)
        monkeypatch.setenv(key, value)
    settings = MqttSettings(url=plant_broker.url, tls=TlsSettings(ca_file=str(plant_broker.ca_file)),
                            spool_dir=str(tmp_path / "spool"), heartbeat_s=0.2)
    plc = plant_broker.connect("plc", topics=(f"{PREFIX}/#",))
    publisher = ResultPublisher(settings, "station-1", on_command=lambda cmd: {"threshold": cmd.value})
    publisher.start()
    operator = None
    try:
        results = [make_result(i, verdict) for i, verdict in enumerate([Verdict.PASS, Verdict.FAIL, Verdict.PASS])]
        for result in results:
            publisher.publish(result)
        assert plc.wait_for(lambda c: len(c.on(ONE.result)) == 3), "station-1's results did not arrive"
        assert [json.loads(p)["sequence"] for p in plc.on(ONE.result)] == [1, 2, 3]
        assert plc.wait_for(lambda c: c.on(ONE.heartbeat) and c.on(ONE.status))
        assert json.loads(plc.on(ONE.status)[0])["state"] == "online"

        operator = plant_broker.connect("operator", topics=(ONE.cmd_response,))
        operator.publish(ONE.cmd, json.dumps({"kind": "set_threshold", "value": 0.5, "id": "op-1"}))
        assert operator.wait_for(lambda c: c.on(ONE.cmd_response)), "no answer to the operator's command"
        assert json.loads(operator.on(ONE.cmd_response)[0]) == {
            "id": "op-1", "kind": "set_threshold", "ok": True, "result": {"threshold": 0.5}}
        assert publisher.health.last_error is None
    finally:
        publisher.stop()
        plc.close()
        if operator:
            operator.close()
    assert "denied" not in plant_broker.broker.log_text().lower()
