"""Delivery guarantees against a real Mosquitto: broker outages, a start with no broker, and a killed publisher.

Delivery is at-least-once in sequence order: after a lost PUBACK the same result may arrive twice, byte for byte.
The consumer (here a subscriber with a persistent session at QoS 1, as a PLC gateway would be) deduplicates on
the sequence number; after that every result must be there exactly once, in order.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_inspector.config import MqttSettings
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.publish.spool import spool_path
from edge_inspector.results import Verdict
from tests.fixtures.broker import Subscriber
from tests.fixtures.inspection_results import make_result

STATION = "line-b"
TOPICS = Topics.for_station("test", STATION)
REPO = Path(__file__).resolve().parents[2]


def deduplicated(payloads: list[bytes]) -> tuple[list[int], int]:
    """Sequence numbers in first-arrival order, and how many repeats there were (each checked identical)."""
    first: dict[int, bytes] = {}
    repeats = 0
    for payload in payloads:
        sequence = json.loads(payload)["sequence"]
        if sequence in first:
            assert first[sequence] == payload, f"sequence {sequence} arrived twice with different content"
            repeats += 1
        else:
            first[sequence] = payload
    return list(first), repeats


def persistent_subscriber(broker, name: str) -> Subscriber:
    return Subscriber(broker, [TOPICS.result, TOPICS.status], client_id=f"gateway-{name}", clean_session=False)


def has_results(count: int):
    return lambda s: len(set(json.loads(p)["sequence"] for p in s.on(TOPICS.result))) >= count


def test_start_without_broker_spools_then_delivers(mosquitto, tmp_path):
    subscriber = persistent_subscriber(mosquitto, "late")
    mosquitto.stop()
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION)
    publisher.start()  # no broker: not an error
    for i in range(25):
        publisher.publish(make_result(i, Verdict.FAIL if i % 3 == 0 else Verdict.PASS))
    time.sleep(0.3)
    assert not publisher.connected and publisher.pending == 25
    assert "unreachable" in publisher.health.last_error
    mosquitto.start()
    assert subscriber.wait_for(has_results(25), timeout=60), mosquitto.log_text()
    order, _ = deduplicated(subscriber.on(TOPICS.result))
    assert order == list(range(1, 26))
    assert publisher.flush(10)
    publisher.stop()
    subscriber.close()


def test_broker_restart_mid_run_every_result_once_in_order(mosquitto, tmp_path):
    subscriber = persistent_subscriber(mosquitto, "outage")
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION)
    publisher.start()
    total = 300
    published = threading.Event()

    def line():  # the inspection loop: one result every 5 ms, whatever the broker does
        for i in range(total):
            publisher.publish(make_result(i, Verdict.FAIL if i % 7 == 0 else Verdict.PASS))
            time.sleep(0.005)
        published.set()

    producer = threading.Thread(target=line)
    producer.start()
    assert subscriber.wait_for(has_results(50), timeout=30)
    mosquitto.stop()
    stopped_at = len(subscriber.on(TOPICS.result))
    time.sleep(1.0)
    assert publisher.pending > 0 and not publisher.connected  # results are piling up in the spool
    mosquitto.start()
    producer.join(60)
    assert published.is_set()
    assert subscriber.wait_for(has_results(total), timeout=60), mosquitto.log_text()
    order, repeats = deduplicated(subscriber.on(TOPICS.result))
    assert order == list(range(1, total + 1))
    assert stopped_at < total  # the outage really happened mid-run
    assert publisher.flush(10) and publisher.health.disconnects >= 1
    print(f"outage: {repeats} repeated deliveries deduplicated by sequence")
    publisher.stop()
    subscriber.close()


def start_publisher_process(url: str, spool_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.publisher_process", url, str(spool_dir), STATION],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout.readline().strip() == "started"
    return process


def ask(process: subprocess.Popen, line: str) -> list[str]:
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().split()


def test_killed_publisher_loses_nothing_and_counts_on(mosquitto, tmp_path):
    subscriber = persistent_subscriber(mosquitto, "kill")
    spool_dir = tmp_path / "spool"
    process = start_publisher_process(mosquitto.url, spool_dir)
    try:
        assert ask(process, "publish 20")[:2] == ["done", "20"]
        assert subscriber.wait_for(has_results(20), timeout=30)
        mosquitto.stop()
        _, last, pending = ask(process, "publish 30")
        assert last == "50" and int(pending) >= 30
        process.send_signal(signal.SIGKILL)  # no stop(), no flush: a crash
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    with sqlite3.connect(spool_path(spool_dir, STATION)) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] >= 30  # really non-empty at the kill

    mosquitto.start()
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test", spool_dir=str(spool_dir)),
                                STATION)
    publisher.start()
    assert publisher.publish(make_result(50, Verdict.FAIL)) == 51  # the counter survived the kill
    assert subscriber.wait_for(has_results(51), timeout=60), mosquitto.log_text()
    order, _ = deduplicated(subscriber.on(TOPICS.result))
    assert order == list(range(1, 52))
    assert publisher.flush(10)
    publisher.stop()
    subscriber.close()


def test_killed_while_sending_loses_nothing(mosquitto, tmp_path):
    """Killed with results in flight (sent, PUBACK not yet recorded): those are sent again, nothing goes missing."""
    subscriber = persistent_subscriber(mosquitto, "kill-busy")
    spool_dir = tmp_path / "spool"
    process = start_publisher_process(mosquitto.url, spool_dir)
    try:
        _, last, _ = ask(process, "publish 400")
        assert last == "400"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    with sqlite3.connect(spool_path(spool_dir, STATION)) as db:
        left = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test", spool_dir=str(spool_dir)),
                                STATION)
    publisher.start()
    assert subscriber.wait_for(has_results(400), timeout=60), mosquitto.log_text()
    order, repeats = deduplicated(subscriber.on(TOPICS.result))
    assert order == list(range(1, 401))
    assert publisher.flush(10)
    print(f"killed while sending: {left} left in the spool, {repeats} repeated deliveries")
    publisher.stop()
    subscriber.close()


def test_last_will_marks_a_killed_station_offline(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto, [TOPICS.status])
    process = start_publisher_process(mosquitto.url, tmp_path / "spool")
    try:
        assert subscriber.wait_for(lambda s: s.on(TOPICS.status), timeout=30)
        assert json.loads(subscriber.on(TOPICS.status)[0])["state"] == "online"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert subscriber.wait_for(lambda s: len(s.on(TOPICS.status)) == 2, timeout=30)
    will = json.loads(subscriber.on(TOPICS.status)[1])
    assert will["state"] == "offline" and will["model_id"] == "killed-model" and will["station"] == STATION
    # The will is retained: the broker tells newcomers the station is down.
    late = Subscriber(mosquitto, [TOPICS.status])
    assert late.wait_for(lambda s: s.messages)
    assert late.messages[0][2] and json.loads(late.messages[0][1])["state"] == "offline"
    late.close()
    subscriber.close()


def test_waiting_for_an_absent_broker_does_not_spin(tmp_path):
    """While the broker is away the publisher must sleep, not poll: the line needs the CPU (this is CPU time
    used, not a speed limit)."""
    publisher = ResultPublisher(MqttSettings(url="mqtt://127.0.0.1:1", spool_dir=str(tmp_path / "spool")), STATION)
    publisher.start()
    publisher.publish(make_result(0, Verdict.FAIL))
    time.sleep(0.2)
    before = time.process_time()
    time.sleep(1.0)
    used = time.process_time() - before
    publisher.stop()
    assert used < 0.3, f"publisher threads used {used:.2f} s of CPU in 1 s of waiting"


def test_publisher_thread_outlives_a_disk_error(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto, [TOPICS.result])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test",
                                             spool_dir=str(tmp_path / "spool")), STATION)
    real_peek = publisher._outbox._spool.peek
    failures = []

    def peek_failing_once(*args, **kwargs):  # the disk hiccups once, as flash storage does
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        return real_peek(*args, **kwargs)

    publisher._outbox._spool.peek = peek_failing_once
    for i in range(3):
        publisher.publish(make_result(i, Verdict.FAIL))
    publisher.start()
    assert subscriber.wait_for(has_results(3), timeout=30)
    assert failures and publisher.health.last_error == "publisher: disk I/O error"
    publisher.stop()
    subscriber.close()
