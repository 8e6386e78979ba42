"""deploy/examples/plc_consumer.py as a real process, on the shipped secured broker with the read-only plc account:
duplicates dropped, gaps reported, rejects passed on, and nothing lost across a broker restart or its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from edge_inspector.results import Verdict
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.schema import build_message
from tests.fixtures.inspection_results import make_result
from tests.fixtures.plant_broker import DEPLOY, plant_broker, read_env_file  # noqa: F401  (fixture)

STATION = Topics.for_station("edge-inspector", "station-1")
P, F, U = Verdict.PASS, Verdict.FAIL, Verdict.UNKNOWN


def message(sequence: int, verdict: Verdict) -> bytes:
    """The result message edge-inspector would publish for this sequence number."""
    result = make_result(sequence, verdict)
    result.sequence = sequence
    return build_message(result, "station-1", include_mask=False).to_json()


class ConsumerProcess:
    """The example consumer started as the README says, with the plc account from make-secrets.sh."""

    def __init__(self, plant, state_path):
        env = {**os.environ, **read_env_file(plant.env_dir / "plc.env")}
        self.process = subprocess.Popen(
            [sys.executable, str(DEPLOY / "examples" / "plc_consumer.py"), "--url", plant.url,
             "--ca-file", str(plant.ca_file), "--client-id", "plc-gateway-test", "--state", str(state_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.events: list[dict] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                if deadline - time.monotonic() <= 0 or self.process.poll() is not None:
                    return predicate(self.events)
                self._cond.wait(0.1)
            return True

    def of(self, kind: str, key: str = "sequence") -> list:
        with self._cond:
            return [event[key] if key else event for event in self.events if event["event"] == kind]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(15)
        return code


def publish_all(plant, items) -> None:
    station = plant.connect("station-1")
    try:
        for sequence, verdict in items:
            station.publish(STATION.result, message(sequence, verdict))
    finally:
        station.close()


def test_consumer_deduplicates_reports_gaps_and_survives_restarts(plant_broker, tmp_path):
    state = tmp_path / "plc-state.json"
    station = plant_broker.connect("station-1")
    station.publish(STATION.status, json.dumps({"state": "online", "station": "station-1"}), retain=True)
    station.close()
    consumer = ConsumerProcess(plant_broker, state)
    try:
        # The retained status arrives once the subscription is in place: from then on nothing can slip past.
        assert consumer.wait_for(lambda e: any(x["event"] == "status" for x in e)), consumer.process.stderr.read()
        publish_all(plant_broker, [(1, P), (2, F), (2, F), (3, P), (5, U), (6, P), (4, P)])
        assert consumer.wait_for(lambda e: 4 in consumer.of("result"))
        assert consumer.of("result") == [1, 2, 3, 5, 6, 4]
        assert consumer.of("duplicate") == [2]
        assert [(g["first_missing"], g["last_missing"], g["count"]) for g in consumer.of("gap", None)] == [(4, 4, 1)]
        assert consumer.of("late") == [4]
        assert [(r["sequence"], r["verdict"]) for r in consumer.of("reject", None)] == [(2, "FAIL"), (5, "UNKNOWN")]

        # The broker restarts (SIGTERM: it saves the consumer's session); the consumer reconnects by itself.
        plant_broker.broker.stop()
        assert consumer.wait_for(lambda e: consumer.of("disconnected", None))
        plant_broker.broker.start()
        assert consumer.wait_for(lambda e: len(consumer.of("connected", None)) == 2)
        assert consumer.of("connected", "session_present") == [False, True]
        publish_all(plant_broker, [(7, P)])
        assert consumer.wait_for(lambda e: 7 in consumer.of("result"))
    finally:
        assert consumer.stop() == 0

    # While the consumer is down: a reject, a duplicate of what it already handled, and a gap (8 never comes).
    publish_all(plant_broker, [(9, F), (7, P), (10, P)])
    consumer = ConsumerProcess(plant_broker, state)
    try:
        assert consumer.wait_for(lambda e: 10 in consumer.of("result"))
        assert consumer.of("connected", "session_present") == [True]
        assert consumer.of("result") == [9, 10]
        # Known from the state file, not from memory (7 may come twice: its PUBACK can be lost to the SIGTERM).
        assert set(consumer.of("duplicate")) == {7}
        assert [(g["first_missing"], g["count"]) for g in consumer.of("gap", None)] == [(8, 1)]
        assert [r["sequence"] for r in consumer.of("reject", None)] == [9]
    finally:
        assert consumer.stop() == 0
    assert json.loads(state.read_text()) == {"station-1": {"last": 10, "missing": [8]}}
