"""Issue 15, item 1: nothing a command or a callback does can silently stop delivery, against a real Mosquitto.

A deeply nested command used to raise RecursionError on paho's network thread; paho re-raised it, the thread
ended, and results sat in the spool while everything still reported 'connected'. Now every callback is contained,
and a watchdog restarts a client whose network thread is dead anyway; health and metrics say so.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from edge_inspector.config import MqttSettings
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.results import Verdict
from tests.fixtures.broker import Subscriber
from tests.fixtures.inspection_results import make_result

STATION = "cell-1"
TOPICS = Topics.for_station("test", STATION)


def start(mosquitto, tmp_path, **handlers) -> tuple[ResultPublisher, Subscriber]:
    subscriber = Subscriber(mosquitto, [TOPICS.result, TOPICS.cmd_response, TOPICS.status])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test", heartbeat_s=0.5,
                                             spool_dir=str(tmp_path / "spool")), STATION, **handlers)
    publisher.start()
    assert subscriber.wait_for(lambda s: any(b'"online"' in p for p in s.on(TOPICS.status)))
    return publisher, subscriber


def sequences(subscriber: Subscriber) -> set[int]:
    return {json.loads(p)["sequence"] for p in subscriber.on(TOPICS.result)}


def publish(publisher: ResultPublisher, first: int, count: int) -> list[int]:
    """Publish ``count`` results (every third a FAIL); returns the FAILs' sequence numbers."""
    fails = []
    for i in range(first, first + count):
        verdict = Verdict.FAIL if i % 3 == 0 else Verdict.PASS
        sequence = publisher.publish(make_result(i, verdict))
        if verdict == Verdict.FAIL:
            fails.append(sequence)
    return fails


def crash(*args):
    raise RuntimeError("injected: paho's network thread ends here")


def test_a_deeply_nested_command_cannot_stop_delivery(mosquitto, tmp_path):
    publisher, subscriber = start(mosquitto, tmp_path, on_command=lambda command: {"applied": command.kind})
    try:
        nested = b'{"kind": "pause", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # ~200 KB
        subscriber.publish(TOPICS.cmd, nested)
        subscriber.publish(TOPICS.cmd, b'{"kind": "pause", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}")  # under 4 KB
        publish(publisher, 0, 600)
        subscriber.publish(TOPICS.cmd, b'{"kind": "resume", "id": "after"}')
        assert subscriber.wait_for(lambda s: len(sequences(s)) == 600 and len(s.on(TOPICS.cmd_response)) == 3,
                                   timeout=60), publisher.health
        answers = [json.loads(p) for p in subscriber.on(TOPICS.cmd_response)]
        assert not answers[0]["ok"] and answers[0]["error"].startswith("command too large")
        assert not answers[1]["ok"] and "nested too deeply" in answers[1]["error"]
        assert answers[2] == {"id": "after", "kind": "resume", "ok": True, "result": {"applied": "resume"}}
        assert sequences(subscriber) == set(range(1, 601))
        health = publisher.health
        assert health.connected and health.pending == 0 and health.restarts == 0
    finally:
        publisher.stop()
        subscriber.close()


def test_a_failing_callback_is_contained_and_counted(mosquitto, tmp_path):
    publisher, subscriber = start(mosquitto, tmp_path)

    def broken_message_handler(topic, payload):  # a bug in our own code behind paho's on_message
        raise RecursionError("maximum recursion depth exceeded")

    publisher._session._events = dataclasses.replace(publisher._session._events, message=broken_message_handler)
    try:
        subscriber.publish(TOPICS.cmd, b'{"kind": "pause"}')
        assert subscriber.wait_for(lambda s: publisher.health.callback_errors == 1, timeout=10)
        fails = publish(publisher, 0, 200)
        assert subscriber.wait_for(lambda s: len(sequences(s)) == 200, timeout=30)
        assert set(fails) <= sequences(subscriber)
        health = publisher.health
        assert health.connected and health.restarts == 0 and "RecursionError" in health.last_error
    finally:
        publisher.stop()
        subscriber.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected crash
def test_watchdog_restarts_a_client_whose_network_thread_died(mosquitto, tmp_path):
    """Fault injected below our guards: paho's own on_message raising with paho's suppression off ends paho's
    network thread, exactly what the nested command did. The watchdog must notice, restart, and deliver."""
    publisher, subscriber = start(mosquitto, tmp_path)
    try:
        client = publisher._session._client
        client.suppress_exceptions = False
        client.on_message = crash
        subscriber.publish(TOPICS.cmd, b'{"kind": "pause"}')
        assert subscriber.wait_for(lambda s: publisher.health.restarts == 1, timeout=20), publisher.health
        assert "network thread has stopped" in publisher.health.last_error
        fails = publish(publisher, 0, 300)
        assert subscriber.wait_for(lambda s: len(sequences(s)) == 300, timeout=60), publisher.health
        assert set(fails) <= sequences(subscriber)
        assert subscriber.wait_for(lambda s: publisher.pending == 0, timeout=10) and publisher.connected
        # The restarted client announced itself again: the retained status ends 'online'.
        assert subscriber.wait_for(lambda s: json.loads(s.on(TOPICS.status)[-1])["state"] == "online", timeout=10)
    finally:
        publisher.stop()
        subscriber.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected crash
def test_a_dead_network_thread_is_not_reported_as_connected(mosquitto, tmp_path):
    """Between the thread's death and the restart, health must not claim a connection (it did, for ever)."""
    publisher, subscriber = start(mosquitto, tmp_path)
    try:
        publisher._stopping.set()  # hold the watchdog (the publisher thread) so the dead state can be observed
        publisher._wake.set()
        publisher._thread.join(5)
        client = publisher._session._client
        client.suppress_exceptions = False
        client.on_message = crash
        subscriber.publish(TOPICS.cmd, b'{"kind": "pause"}')
        deadline = time.monotonic() + 10
        while publisher._session.network_alive and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not publisher._session.network_alive
        health = publisher.health
        assert not health.connected and any("not connected" in p for p in health.problems)
    finally:
        publisher._thread = None
        publisher.stop()
        subscriber.close()
