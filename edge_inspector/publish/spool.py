"""A durable, ordered on-disk spool of outgoing results (SQLite, from the standard library).

Every result is written here before anything is sent; the publisher deletes an entry only after the broker has
acknowledged it (PUBACK). So a broker outage, a crash or a kill of edge-inspector loses nothing: what is left is
replayed oldest-first on the next start. The spool also owns the per-station sequence counter, so sequence
numbers keep rising across restarts.

The size bound (payload bytes) drops the oldest PASS results first. FAIL and UNKNOWN results are never dropped:
past the bound they are kept and an error is logged (a reject that never reaches the PLC is worse than a full disk).
Commits use WAL mode with ``synchronous=FULL`` by default (``mqtt.spool_sync``), so a stored result survives a power
cut, not just a crash; ``normal`` trades that for speed on slow flash and still survives a kill of the process.

A write that fails (disk full, I/O error, read-only file system) still uses up its sequence number: the caller
(``publish.outbox``) sends that result without a spool copy, and if it is lost after all, the PLC sees the gap.
A damaged file is reported as such (``SpoolError.corrupt``); ``spool_repair`` moves it aside and reads back
whatever rows are still readable.
"""

from __future__ import annotations

import errno
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
WAL_PAGES = 64
"""Pages the write-ahead log holds before SQLite folds it into the database file (and then reuses it)."""

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


_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class SpoolError(EdgeInspectorError):
    """The spool file cannot be opened or written (disk full, permissions, corrupt database, in use).

    Attributes:
        sequence: The sequence number a failed ``append``/``reserve`` used up (None for other failures).
        corrupt: The database file is damaged (not a full disk or a permission problem): move it aside.
        full: The disk is full: a condition of the moment, unlike a folder that cannot be written at all.
    """

    def __init__(self, message: str, sequence: int | None = None, corrupt: bool = False, full: bool = False):
        super().__init__(message)
        self.sequence = sequence
        self.corrupt = corrupt
        self.full = full


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT_CODES


def _is_full(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def spool_path(spool_dir: str | Path, station: str) -> Path:
    """One spool per station, so two stations on one box never share sequence numbers or results."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", station) or "station"
    return Path(spool_dir) / f"results-{safe}.sqlite"


def stored_last_sequence(path: str | Path) -> int:
    """The sequence counter saved in a spool file, read without opening it for writing (0 when there is none)."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_sequence'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0
    finally:
        db.close()


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
        last_sequence: Continue numbering after at least this (a spool that replaces a damaged one).

    Raises:
        SpoolError: The folder or file cannot be opened or created (``corrupt`` set when the file is damaged), or
            another process holds it.
    """

    def __init__(self, path: str | Path, max_bytes: int, sync: str = "full", last_sequence: int = 0):
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot open the result spool {self.path}: {exc} (mqtt.spool_dir must be a writable "
                             "folder)") from exc
        self._lock_file = self._claim()
        try:
            # check_same_thread=False: the loop appends and the publisher thread deletes; _lock serialises them.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            # A small write-ahead log, reused after each checkpoint: the spool must fit, and keep working, on a
            # nearly full card (SQLite's default lets the log grow to 4 MB before it is folded into the file).
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            self._db.executescript(_SCHEMA)
            damage = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if damage != "ok":
                raise SpoolError(f"the result spool {self.path} is damaged: {damage}", corrupt=True)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM entries").fetchone()
            self._last_sequence = max(self._meta("last_sequence"), int(last_sequence))
        except (sqlite3.Error, OSError, SpoolError) as exc:
            self._lock_file.close()
            if isinstance(exc, SpoolError):
                raise
            corrupt = isinstance(exc, sqlite3.Error) and _is_corrupt(exc)
            raise SpoolError(f"cannot open the result spool {self.path}: {exc}", corrupt=corrupt,
                             full=_is_full(exc)) from exc
        self._count, self._bytes = int(row[0]), int(row[1])
        self._over_cap_warned = False
        self._drop_warned = False

    def _claim(self):
        """Lock the spool for this process: a second publisher on the same spool would send every result twice.

        The kernel drops the lock when the process ends, however it ends, so a killed run never blocks the next.
        """
        try:
            lock_file = open(self.path.with_name(self.path.name + ".lock"), "a+")
        except OSError as exc:
            raise SpoolError(f"cannot open the result spool {self.path}: {exc} (mqtt.spool_dir must be a writable "
                             "folder)", full=_is_full(exc)) from exc
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
        """The highest sequence number ever assigned, stored or not (0 for a new spool)."""
        return self._last_sequence

    @property
    def dropped_pass(self) -> int:
        """PASS entries dropped by the size bound, over the spool's lifetime."""
        with self._lock:
            try:
                return self._meta("dropped_pass")
            except sqlite3.Error:  # a failing or closed file: the count is not known now
                return 0

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
            SpoolError: The write failed: nothing was stored, but the number is used up (``SpoolError.sequence``).
                A ``make_payload`` error propagates and leaves the counter alone.
        """
        with self._lock:
            sequence = self._last_sequence + 1
            payload = make_payload(sequence)
            self._last_sequence = sequence
            self._insert(sequence, verdict, payload)
            self._enforce_bound()
        return sequence

    def put(self, entry: SpoolEntry) -> None:
        """Store an entry that already has its sequence number (moved back from memory, or salvaged).

        Raises:
            SpoolError: The write failed; nothing was stored.
        """
        with self._lock:
            self._last_sequence = max(self._last_sequence, entry.sequence)
            self._insert(entry.sequence, entry.verdict, entry.payload)
            self._enforce_bound()

    def _insert(self, sequence: int, verdict: str, payload: bytes) -> None:
        """One row and the counter, in one transaction. Caller holds _lock."""
        try:
            with self._transaction():
                self._db.execute("INSERT INTO entries (sequence, verdict, payload) VALUES (?, ?, ?)",
                                 (sequence, verdict, payload))
                self._set_meta("last_sequence", self._last_sequence)
        except sqlite3.IntegrityError:  # put() of an entry that is already stored
            return
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write to the result spool {self.path}: {exc}", sequence,
                             _is_corrupt(exc)) from exc
        self._count += 1
        self._bytes += len(payload)

    def reserve(self) -> int:
        """Advance the sequence counter without storing anything (used when publishing is disabled).

        Raises:
            SpoolError: The counter could not be saved; the number is used up all the same.
        """
        with self._lock:
            self._last_sequence += 1
            try:
                with self._transaction():
                    self._set_meta("last_sequence", self._last_sequence)
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot write to the result spool {self.path}: {exc}", self._last_sequence,
                                 _is_corrupt(exc)) from exc
            return self._last_sequence

    def peek(self, after: int = 0, limit: int = 100) -> list[SpoolEntry]:
        """Up to ``limit`` entries with a sequence above ``after``, oldest first.

        Raises:
            SpoolError: The file cannot be read (``corrupt`` when it is damaged).
        """
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT sequence, verdict, payload FROM entries WHERE sequence > ? ORDER BY sequence LIMIT ?",
                    (after, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot read the result spool {self.path}: {exc}", corrupt=_is_corrupt(exc)) from exc
        return [SpoolEntry(int(s), v, bytes(p)) for s, v, p in rows]

    def remove(self, sequences: list[int]) -> int:
        """Delete entries whose PUBACK arrived, in one transaction (one disk sync for a whole batch of acks).

        Returns:
            How many were there (an entry the size bound already dropped is skipped).

        Raises:
            SpoolError: The deletion failed (the entries stay, and would be sent again after a restart).
        """
        if not sequences:
            return 0
        with self._lock:
            try:
                removed, freed = self._delete(sequences)
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot delete from the result spool {self.path}: {exc}",
                                 corrupt=_is_corrupt(exc)) from exc
            self._count -= removed
            self._bytes -= freed
            if self._bytes <= self.max_bytes:
                self._over_cap_warned = self._drop_warned = False
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()  # releases the flock

    def _delete(self, sequences: list[int]) -> tuple[int, int]:
        """Delete entries in one transaction; returns (how many were there, their payload bytes)."""
        removed = freed = 0
        with self._transaction():
            for sequence in sequences:
                row = self._db.execute("SELECT LENGTH(payload) FROM entries WHERE sequence = ?",
                                       (sequence,)).fetchone()
                if row is None:
                    continue
                self._db.execute("DELETE FROM entries WHERE sequence = ?", (sequence,))
                removed += 1
                freed += int(row[0])
        return removed, freed

    # ------------------------------------------------------------------ internals
    def _transaction(self):
        return _Transaction(self._db)

    def _enforce_bound(self) -> None:
        """Drop the oldest PASS entries until under the bound; never drop anything else. Caller holds _lock."""
        if self._bytes <= self.max_bytes:
            return
        try:
            self._drop_oldest_pass()
        except sqlite3.Error as exc:  # the new entry is stored; only making room failed (e.g. the disk is full)
            log.error("spool over its size bound and cannot drop PASS results", extra=kv(error=str(exc)))

    def _drop_oldest_pass(self) -> None:
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

