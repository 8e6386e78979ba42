"""A durable, ordered on-disk spool of outgoing results (SQLite, from the standard library).

Every result is written here before anything is sent; the publisher deletes an entry only after the broker has
acknowledged it (PUBACK). So a broker outage, a crash or a kill of edge-inspector loses nothing: what is left is
replayed oldest-first on the next start. The spool also owns the per-station sequence counter, so sequence
numbers keep rising across restarts.

The size bound (payload bytes) drops the oldest PASS results first. FAIL and UNKNOWN results are never dropped:
past the bound they are kept and an error is logged (a reject that never reaches the PLC is worse than a full disk).
Commits use WAL mode with ``synchronous=FULL`` by default (``mqtt.spool_sync``), so a stored result survives a power
cut, not just a crash; ``normal`` trades that for speed on slow flash and still survives a kill of the process.
"""

from __future__ import annotations

import fcntl
import logging
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_inspector.errors import EdgeInspectorError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

DISCARDABLE = "PASS"
"""The only verdict the size bound may drop."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    sequence INTEGER PRIMARY KEY,
    verdict  TEXT    NOT NULL,
    payload  BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class SpoolError(EdgeInspectorError):
    """The spool file cannot be opened or written (disk full, permissions, corrupt database, in use)."""


def spool_path(spool_dir: str | Path, station: str) -> Path:
    """One spool per station, so two stations on one box never share sequence numbers or results."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", station) or "station"
    return Path(spool_dir) / f"results-{safe}.sqlite"


@dataclass(frozen=True)
class SpoolEntry:
    sequence: int
    verdict: str
    payload: bytes


class Spool:
    """Ordered, durable queue of payloads keyed by sequence number. Thread-safe.

    Args:
        path: The SQLite file (its folder is created).
        max_bytes: Bound on the total payload bytes kept; only PASS entries are dropped to honour it.
        sync: "full" (every commit reaches the disk: survives a power cut) or "normal" (survives a crash or kill
            of the process; a power cut can lose the latest commits).
    """

    def __init__(self, path: str | Path, max_bytes: int, sync: str = "full"):
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot open the result spool {self.path}: {exc}") from exc
        self._lock_file = self._claim()
        try:
            # check_same_thread=False: the loop appends and the publisher thread deletes; _lock serialises them.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM entries").fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._lock_file.close()
            raise SpoolError(f"cannot open the result spool {self.path}: {exc}") from exc
        self._count, self._bytes = int(row[0]), int(row[1])
        self._over_cap_warned = False
        self._drop_warned = False

    def _claim(self):
        """Lock the spool for this process: a second publisher on the same spool would send every result twice.

        The kernel drops the lock when the process ends, however it ends, so a killed run never blocks the next.
        """
        lock_file = open(self.path.with_name(self.path.name + ".lock"), "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise SpoolError(f"the result spool {self.path} is in use by another edge-inspector process; "
                             "give each running station its own station name or mqtt.spool_dir") from None
        return lock_file

    # ------------------------------------------------------------------ counters kept in the meta table
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def last_sequence(self) -> int:
        """The highest sequence number ever assigned (0 for a new spool)."""
        with self._lock:
            return self._meta("last_sequence")

    @property
    def dropped_pass(self) -> int:
        """PASS entries dropped by the size bound, over the spool's lifetime."""
        with self._lock:
            return self._meta("dropped_pass")

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Total payload bytes waiting."""
        return self._bytes

    # ------------------------------------------------------------------ queue operations
    def append(self, verdict: str, make_payload: Callable[[int], bytes]) -> int:
        """Assign the next sequence number and store the payload built for it, in one transaction.

        Args:
            verdict: "PASS", "FAIL" or "UNKNOWN" (decides what the size bound may drop).
            make_payload: Builds the payload for the assigned sequence number.

        Returns:
            The sequence number assigned.

        Raises:
            SpoolError: The write failed (nothing was stored, the counter did not move).
        """
        with self._lock:
            try:
                sequence = self._meta("last_sequence") + 1
            except sqlite3.Error as exc:  # e.g. the spool was closed by stop()
                raise SpoolError(f"cannot read the result spool {self.path}: {exc}") from exc
            payload = make_payload(sequence)
            try:
                with self._transaction():
                    self._db.execute("INSERT INTO entries (sequence, verdict, payload) VALUES (?, ?, ?)",
                                     (sequence, verdict, payload))
                    self._set_meta("last_sequence", sequence)
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot write to the result spool {self.path}: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            self._enforce_bound()
        return sequence

    def reserve(self) -> int:
        """Advance the sequence counter without storing anything (used when publishing is disabled)."""
        with self._lock, self._transaction():
            sequence = self._meta("last_sequence") + 1
            self._set_meta("last_sequence", sequence)
        return sequence

    def peek(self, after: int = 0, limit: int = 100) -> list[SpoolEntry]:
        """Up to ``limit`` entries with a sequence above ``after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, verdict, payload FROM entries WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (after, limit),
            ).fetchall()
        return [SpoolEntry(int(s), v, bytes(p)) for s, v, p in rows]

    def remove(self, sequences: list[int]) -> int:
        """Delete entries whose PUBACK arrived, in one transaction (one disk sync for a whole batch of acks).

        Returns:
            How many were there (an entry the size bound already dropped is skipped).
        """
        if not sequences:
            return 0
        with self._lock, self._transaction():
            removed = 0
            for sequence in sequences:
                row = self._db.execute("SELECT LENGTH(payload) FROM entries WHERE sequence = ?",
                                       (sequence,)).fetchone()
                if row is None:
                    continue
                self._db.execute("DELETE FROM entries WHERE sequence = ?", (sequence,))
                removed += 1
                self._bytes -= int(row[0])
            self._count -= removed
            if self._bytes <= self.max_bytes:
                self._over_cap_warned = self._drop_warned = False
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()  # releases the flock

    # ------------------------------------------------------------------ internals
    def _transaction(self):
        return _Transaction(self._db)

    def _enforce_bound(self) -> None:
        """Drop the oldest PASS entries until under the bound; never drop anything else. Caller holds _lock."""
        if self._bytes <= self.max_bytes:
            return
        victims, freed, last = [], 0, 0
        while self._bytes - freed > self.max_bytes:
            batch = self._db.execute(
                "SELECT sequence, LENGTH(payload) FROM entries WHERE verdict = ? AND sequence > ? "
                "ORDER BY sequence LIMIT 256", (DISCARDABLE, last),
            ).fetchall()
            if not batch:
                break
            for sequence, size in batch:
                if self._bytes - freed <= self.max_bytes:
                    break
                victims.append((sequence,))
                freed += size
            last = batch[-1][0]
        if victims:
            with self._transaction():
                self._db.executemany("DELETE FROM entries WHERE sequence = ?", victims)
                self._set_meta("dropped_pass", self._meta("dropped_pass") + len(victims))
            self._count -= len(victims)
            self._bytes -= freed
            # Warn once per episode of being full, not on every append while it lasts.
            if not self._drop_warned:
                self._drop_warned = True
                log.warning("spool full: dropping oldest PASS results (counted in dropped_pass)",
                            extra=kv(dropped=len(victims), path=str(self.path), max_bytes=self.max_bytes))
        if self._bytes > self.max_bytes and not self._over_cap_warned:
            self._over_cap_warned = True
            log.error("spool over its size bound holding only FAIL/UNKNOWN results: keeping them all",
                      extra=kv(entries=self._count, bytes=self._bytes, max_bytes=self.max_bytes,
                               path=str(self.path)))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
