"""Issue 15, item 2: storage faults under the result spool fail loudly and lose nothing that can be kept.

On a real, full file system (a tmpfs the test mounts) and a real Mosquitto: results go to the broker directly when
the spool cannot be written (marked unspooled), FAILs are held in memory while the broker is away too, every loss
is a gap in the sequence, health and the status topic say why, and the spool recovers when space returns. A spool
with a damaged page is moved aside and its readable rows are replayed.
"""

from __future__ import annotations

import json
import sqlite3
import threading

from edge_inspector.capture.demo_line import DemoLine
from edge_inspector.cli.run import run_line
from edge_inspector.config import MqttSettings, load_run_config
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.publish.spool import spool_path
from edge_inspector.results import Verdict
from tests.fixtures.broker import Subscriber, free_port
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.inspection_results import make_result
from tests.fixtures.small_fs import small_fs  # noqa: F401  (fixture)
from tests.runtime.test_ops_http import get_json, scrape_when_up, wait_for

STATION = "cell-2"
TOPICS = Topics.for_station("test", STATION)


def publisher_on(mosquitto, spool_dir) -> ResultPublisher:
    return ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test", heartbeat_s=0.5,
                                        spool_dir=str(spool_dir)), STATION)


def messages(subscriber: Subscriber) -> dict[int, dict]:
    """Delivered results by sequence (duplicates, identical by design, collapse)."""
    return {doc["sequence"]: doc for doc in (json.loads(p) for p in subscriber.on(TOPICS.result))}


def publish(publisher: ResultPublisher, first: int, count: int) -> tuple[list[int], list[int]]:
    """``count`` results, every third a FAIL; returns (all sequences, FAIL sequences)."""
    every, fails = [], []
    for i in range(first, first + count):
        verdict = Verdict.FAIL if i % 3 == 0 else Verdict.PASS
        sequence = publisher.publish(make_result(i, verdict))
        every.append(sequence)
        if verdict == Verdict.FAIL:
            fails.append(sequence)
    return every, fails


def online(subscriber: Subscriber) -> bool:
    return any(json.loads(p)["state"] == "online" for p in subscriber.on(TOPICS.status))


def test_a_full_disk_under_the_spool_loses_nothing_while_the_broker_is_up(mosquitto, small_fs):
    fs = small_fs(1024)
    subscriber = Subscriber(mosquitto, [TOPICS.result, TOPICS.status])
    publisher = publisher_on(mosquitto, fs.path / "spool")
    publisher.start()
    try:
        assert subscriber.wait_for(online)
        fs.fill()
        sent, fails = publish(publisher, 0, 2500)
        assert sent == list(range(1, 2501))
        assert subscriber.wait_for(lambda s: len(messages(s)) == 2500, timeout=120), publisher.health
        delivered = messages(subscriber)
        assert set(fails) <= set(delivered)
        health = publisher.health
        assert health.unspooled > 2000 and health.lost_fail == 0 and health.lost_pass == 0
        assert "result spool cannot be written" in health.storage_error
        assert sum(1 for doc in delivered.values() if doc.get("unspooled")) == health.unspooled
        # The retained status says what is wrong while it lasts.
        assert subscriber.wait_for(lambda s: "spool" in " ".join(json.loads(s.on(TOPICS.status)[-1])["problems"]))
        assert any("spool" in problem for problem in health.problems)

        fs.free()  # space is back: the spool takes results again
        more, more_fails = publish(publisher, 2500, 100)
        assert subscriber.wait_for(lambda s: len(messages(s)) == 2600, timeout=60)
        assert publisher.health.storage_error is None
        assert not any(messages(subscriber)[sequence].get("unspooled") for sequence in more[1:])
        assert subscriber.wait_for(lambda s: json.loads(s.on(TOPICS.status)[-1])["problems"] == [])
        assert subscriber.wait_for(lambda s: publisher.pending == 0)
    finally:
        publisher.stop()
        subscriber.close()


def test_a_full_disk_and_no_broker_hold_results_in_memory_until_the_broker_is_back(mosquitto, small_fs):
    fs = small_fs(1024)
    subscriber = Subscriber(mosquitto, [TOPICS.result], client_id="plc", clean_session=False)
    mosquitto.stop()
    publisher = publisher_on(mosquitto, fs.path / "spool")
    publisher.start()
    try:
        fs.fill()
        sent, fails = publish(publisher, 0, 600)
        health = publisher.health
        assert health.held >= 590 and health.pending == 600 and health.lost_fail == 0
        mosquitto.start()
        assert subscriber.wait_for(lambda s: len(messages(s)) == 600, timeout=120), publisher.health
        assert set(messages(subscriber)) == set(sent) and set(fails) <= set(messages(subscriber))
        assert subscriber.wait_for(lambda s: publisher.health.held == 0 and publisher.pending == 0, timeout=20)
    finally:
        publisher.stop()
        subscriber.close()


def test_memory_bound_gives_up_pass_before_fail_and_every_loss_is_a_gap(small_fs):
    from edge_inspector.publish.outbox import Outbox  # new in issue 15: imported here so the other tests run before it

    fs = small_fs(512)
    payload_size = 1000
    outbox = Outbox(fs.path / "spool.sqlite", max_bytes=1 << 20, hold_max_bytes=20 * payload_size)
    fs.fill()
    verdicts = {}
    for i in range(60):
        verdict = "FAIL" if i % 3 == 0 else "PASS"
        sequence = outbox.add(verdict, lambda seq, unspooled: json.dumps({"sequence": seq}).encode().ljust(1000))
        verdicts[sequence] = verdict
    assert list(verdicts) == list(range(1, 61))  # every result used up its number
    health = outbox.health
    held = {entry.sequence for entry in outbox.peek(after=0, limit=100)}
    assert health.held == len(held) == 20
    assert health.lost_pass + health.lost_fail + health.held == 60  # the gaps are exactly what was given up
    # FAILs are given up only once no PASS is left in memory: every PASS went first.
    assert all(verdicts[s] == "FAIL" for s in held) and health.lost_pass == 40 and health.lost_fail == 0
    for i in range(60, 80):
        outbox.add("FAIL", lambda seq, unspooled: json.dumps({"sequence": seq}).encode().ljust(1000))
    health = outbox.health
    assert health.lost_fail == 20 and health.held == 20  # now FAILs go, oldest first
    assert [entry.sequence for entry in outbox.peek(after=0, limit=100)] == list(range(61, 81))
    outbox.close()


def damage_one_leaf_page(path) -> int:
    """Overwrite one leaf page in the middle of the entries table with garbage; returns its page number."""
    db = sqlite3.connect(path)
    pages = [row[0] for row in db.execute("SELECT pageno FROM dbstat WHERE name = 'entries' AND pagetype = 'leaf' "
                                          "ORDER BY pageno")]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    victim = pages[len(pages) // 2]
    with open(path, "r+b") as file:
        file.seek((victim - 1) * page_size)
        file.write(bytes([0x5A]) * page_size)
    return victim


def test_a_damaged_spool_is_moved_aside_and_its_readable_rows_replayed(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto, [TOPICS.result], client_id="plc", clean_session=False)
    mosquitto.stop()
    spool_dir = tmp_path / "spool"
    first = publisher_on(mosquitto, spool_dir)
    first.start()
    sent, fails = publish(first, 0, 400)
    first.stop(drain_timeout=0)
    path = spool_path(spool_dir, STATION)
    damage_one_leaf_page(path)

    mosquitto.start()
    publisher = publisher_on(mosquitto, spool_dir)  # a damaged file is no reason to refuse to start
    publisher.start()
    try:
        later, _ = publish(publisher, 400, 50)
        assert later == list(range(401, 451))  # numbering goes on above the damaged spool's
        assert subscriber.wait_for(lambda s: set(later) <= set(messages(s)), timeout=60), publisher.health
        assert subscriber.wait_for(lambda s: publisher.pending == 0, timeout=30)
        delivered = set(messages(subscriber))
        lost = set(sent) - delivered
        assert 0 < len(lost) <= 10, f"only the damaged page's rows may be lost, lost {sorted(lost)}"
        assert len(delivered & set(sent)) >= 390
        assert publisher.health.quarantined == 1
        assert len(list(spool_dir.glob("*.damaged-*"))) >= 1  # kept for inspection
    finally:
        publisher.stop()
        subscriber.close()


def test_the_line_on_a_full_spool_disk_keeps_judging_and_readyz_says_why(mosquitto, small_fs, tmp_path):
    fs = small_fs(1024)
    bundle = make_tiny_bundle(tmp_path / "bundle", 64, 64)
    port = free_port()
    config = load_run_config(None, [f"http.port={port}", "engine.intra_op_threads=1", f"station={STATION}",
                                    f"mqtt.url={mosquitto.url}", "mqtt.topic_prefix=test",
                                    f"mqtt.spool_dir={fs.path / 'spool'}", "archive.enabled=false"],
                             {"model": str(bundle.path)})
    subscriber = Subscriber(mosquitto, [TOPICS.result])
    fs.fill()
    source = DemoLine(parts=150, size=64, seed=2, interval_s=0.02)
    done = {}
    runner = threading.Thread(target=lambda: done.update(stats=run_line(config, source=source, quiet=True)))
    runner.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: scrape_when_up(url).get(("edge_inspector_spool_failing", ())) == 1.0, "spool_failing 1")
        status, doc = get_json(url + "/readyz")
        assert status == 503 and "result spool cannot be written" in doc["reason"], doc
        fs.free()
    finally:
        runner.join(60)
        subscriber.wait_for(lambda s: len(messages(s)) == 150, timeout=30)
        subscriber.close()
    assert done["stats"]["counts"]["judged"] == 150
    assert set(messages(subscriber)) == set(range(1, 151))  # every part reached the broker


def test_a_restart_while_the_spool_is_still_full_never_reuses_a_number(small_fs):
    from edge_inspector.publish.outbox import Outbox  # new in issue 15

    fs = small_fs(512)
    path = fs.path / "spool" / "results.sqlite"

    def payload(sequence, unspooled):
        return json.dumps({"sequence": sequence, "unspooled": unspooled}).encode()

    first = Outbox(path, max_bytes=1 << 20)
    assert [first.add("PASS", payload) for _ in range(5)] == [1, 2, 3, 4, 5]
    fs.fill()
    assert [first.add("FAIL", payload) for _ in range(10)] == list(range(6, 16))  # held in memory, unsaved
    first.close()  # the process ends while the disk is still full
    second = Outbox(path, max_bytes=1 << 20)  # the disk is still full
    assert second.add("FAIL", payload) == 16  # not 6: that number went to another result before the restart
    assert second.health.storage_error is not None and second.health.held == 1
    second.close()
    fs.free()
    third = Outbox(path, max_bytes=1 << 20)
    assert third.add("PASS", payload) == 17 and third.health.storage_error is None
    third.close()
