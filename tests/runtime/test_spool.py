"""The disk spool: ordered, durable across reopen, sequence counter persisted, bound never drops a FAIL."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from edge_inspector.publish.spool import Spool, SpoolError, spool_path


def payload_of(size: int):
    return lambda sequence: f"{sequence:08d}".encode().ljust(size, b".")


def test_entries_come_back_in_order_and_survive_reopen(tmp_path):
    path = tmp_path / "spool" / "results.sqlite"
    spool = Spool(path, max_bytes=1 << 20)
    sequences = [spool.append("FAIL" if i % 4 == 0 else "PASS", payload_of(50)) for i in range(20)]
    assert sequences == list(range(1, 21))
    assert spool.remove([3]) == 1 and spool.remove([3]) == 0
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)
    entries = reopened.peek(limit=100)
    assert [e.sequence for e in entries] == [s for s in range(1, 21) if s != 3]
    assert entries[0].payload.startswith(b"00000001") and entries[0].verdict == "FAIL"
    assert len(reopened) == 19 and reopened.size_bytes == 19 * 50
    assert [e.sequence for e in reopened.peek(after=10, limit=3)] == [11, 12, 13]
    # The counter carries on from where the last run stopped, even once the spool is empty.
    assert reopened.remove([e.sequence for e in entries]) == 19
    reopened.close()
    again = Spool(path, max_bytes=1 << 20)
    assert len(again) == 0 and again.last_sequence == 20
    assert again.append("PASS", payload_of(10)) == 21
    assert again.reserve() == 22 and again.last_sequence == 22
    again.close()


def test_bound_drops_oldest_pass_and_never_a_fail(tmp_path, caplog):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1000)
    verdicts = {}
    # Attach caplog to our logger itself: setup_logging() elsewhere may have turned propagation off.
    logger = logging.getLogger("edge_inspector.publish.spool")
    logger.addHandler(caplog.handler)
    try:
        for i in range(30):
            verdict = ["PASS", "FAIL", "PASS", "UNKNOWN", "PASS"][i % 5]
            verdicts[spool.append(verdict, payload_of(100))] = verdict
    finally:
        logger.removeHandler(caplog.handler)
    kept = {e.sequence: e.verdict for e in spool.peek(limit=100)}
    # Every FAIL and UNKNOWN survives; PASS entries fill what room is left, newest kept.
    rejects = [s for s, v in verdicts.items() if v != "PASS"]
    assert all(s in kept for s in rejects)
    assert len(rejects) == 12 and spool.size_bytes > spool.max_bytes  # over the bound with rejects only
    assert all(v != "PASS" for v in kept.values())
    assert spool.dropped_pass == 18
    assert "keeping them all" in caplog.text

    # Below the bound again, the newest PASS are the ones kept.
    spool2 = Spool(tmp_path / "s2.sqlite", max_bytes=1000)
    for i in range(15):
        spool2.append("FAIL" if i == 0 else "PASS", payload_of(100))
    assert [e.sequence for e in spool2.peek(limit=100)] == [1, *range(7, 16)]
    assert spool2.dropped_pass == 5 and spool2.size_bytes == 1000


def test_failed_payload_build_leaves_counter_alone(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20)

    def broken(sequence):
        raise ValueError("bad result")

    with pytest.raises(ValueError):
        spool.append("FAIL", broken)
    assert spool.append("FAIL", payload_of(5)) == 1


def test_unopenable_spool_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError, match="cannot open the result spool"):
        Spool(blocker / "results.sqlite", max_bytes=100)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="corrupt.sqlite"):
        Spool(corrupt, max_bytes=100)


def test_concurrent_append_and_remove(tmp_path):
    import threading

    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20)
    removed = []

    def consumer():
        while len(removed) < 200:
            batch = [entry.sequence for entry in spool.peek(limit=10)]
            assert spool.remove(batch) == len(batch)
            removed.extend(batch)

    thread = threading.Thread(target=consumer)
    thread.start()
    for _ in range(200):
        spool.append("PASS", payload_of(20))
    thread.join(30)
    assert sorted(removed) == list(range(1, 201)) and len(spool) == 0
    assert sqlite3.connect(spool.path).execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_one_process_per_spool_and_one_spool_per_station(tmp_path):
    first = Spool(spool_path(tmp_path, "line 1/a"), max_bytes=100)
    with pytest.raises(SpoolError, match="in use by another edge-inspector process"):
        Spool(spool_path(tmp_path, "line 1/a"), max_bytes=100)
    other = Spool(spool_path(tmp_path, "line-2"), max_bytes=100)  # another station, another file
    assert other.path != first.path and first.path.parent == tmp_path
    first.close()
    Spool(spool_path(tmp_path, "line 1/a"), max_bytes=100).close()  # free again once closed
    other.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sync_modes_are_applied(tmp_path, sync):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=100, sync=sync)
    assert spool.append("FAIL", payload_of(5)) == 1
    level = spool._db.execute("PRAGMA synchronous").fetchone()[0]
    assert level == {"full": 2, "normal": 1}[sync]
    spool.close()
    with pytest.raises(ValueError, match="'full' or 'normal'"):
        Spool(tmp_path / "t.sqlite", max_bytes=100, sync="off")
