"""Every result on its way to the broker: numbered, kept in the disk spool, or held in memory when the spool fails.

Normally each result is written to the spool (``spool.py``) before anything is sent, and leaves it on PUBACK. When
the spool cannot be written (disk full, I/O error, read-only file system), the result still gets its sequence
number, is built as an *unspooled* message (``"unspooled": true``) and is held in memory, where the publisher sends
it like a spooled one: with the broker up, nothing is lost. Memory holds at most ``HOLD_MAX_BYTES``; past that the
oldest PASS results go first, a FAIL only when no PASS is left, and each is counted. Since every result used up a
number, whatever is lost shows up as a gap in the sequence at the PLC. Each write tries the spool again, so the
outbox recovers on its own once space returns; what memory held then moves into the spool.

A damaged spool file is moved aside (``spool_repair``), a new one started with a counter above the old one's, and
the old one's readable results replayed into it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_inspector.log import kv
from edge_inspector.publish.counter_mirror import CounterMirror
from edge_inspector.publish.spool import DISCARDABLE, Spool, SpoolEntry, SpoolError, stored_last_sequence
from edge_inspector.publish.spool_repair import quarantine, salvage

log = logging.getLogger(__name__)

HOLD_MAX_BYTES = 64 * 1024 * 1024
"""Payload bytes held in memory while the spool cannot be written (about 60 000 results without masks)."""
REOPEN_EVERY_S = 5.0
"""How often to try opening a spool again after a damaged one could not be replaced."""
MAX_UNREMOVED = 100_000
"""Acknowledged results whose deletion failed, remembered to delete later (beyond: re-sent after a restart)."""

PayloadBuilder = Callable[[int, bool], bytes]
"""Builds a result's message for (sequence number, unspooled)."""


@dataclass(frozen=True)
class OutboxHealth:
    """What the outbox holds and what it could not keep, for health, metrics, the heartbeat and the status topic."""

    pending: int
    """Results waiting for a PUBACK, in the spool or in memory."""
    held: int
    """Of those, held in memory because the spool could not be written."""
    unspooled: int
    """Results that could not be written to the spool, since start."""
    lost_pass: int
    lost_fail: int
    """PASS / FAIL-or-UNKNOWN results given up (memory bound, or still unsent at stop with no spool), since start."""
    dropped_pass: int
    """PASS results the spool's size bound dropped (lifetime of the spool file)."""
    quarantined: int
    """Damaged spool files moved aside since start."""
    storage_error: str | None
    """Why the spool cannot be written now; None while it works."""
    last_sequence: int


def _readable(entry: SpoolEntry) -> bool:
    """A salvaged row is replayed only if it is still the message it was (JSON with its own sequence number)."""
    try:
        return json.loads(entry.payload).get("sequence") == entry.sequence
    except (ValueError, AttributeError):
        return False


class Outbox:
    """The publisher's store of unacknowledged results. Thread-safe: the loop adds, the publisher thread sends.

    Args:
        path: The spool file.
        max_bytes: The spool's size bound.
        sync: The spool's sync mode.
        hold_max_bytes: Bound on what memory holds while the spool fails.

    Raises:
        SpoolError: The spool cannot be opened (a damaged file is replaced, not raised).
    """

    def __init__(self, path: str | Path, max_bytes: int, sync: str = "full", hold_max_bytes: int = HOLD_MAX_BYTES):
        self.path, self.max_bytes, self.sync, self.hold_max_bytes = Path(path), int(max_bytes), sync, hold_max_bytes
        self._lock = threading.RLock()
        self._held: OrderedDict[int, SpoolEntry] = OrderedDict()
        self._held_pass: deque[int] = deque()  # PASS sequences in memory, oldest first (stale ones skipped)
        self._held_bytes = 0
        self._unremoved: set[int] = set()
        self._unspooled = self._lost_pass = self._lost_fail = self._quarantined = 0
        self._storage_error: str | None = None
        self._reopen_at = 0.0
        self.resets = 0
        """Times the spool was replaced; the sender starts over from the oldest pending result after each."""
        self._closed = False
        self._spool: Spool | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the spool says what is wrong with the folder, just below
        self._mirror = CounterMirror(self.path.with_name(self.path.name + ".counter"))
        try:
            self._spool = self._open(self._mirror.read())
        except SpoolError as exc:
            if not exc.full:  # a folder that cannot be written at all is a configuration error: refuse to start
                self._mirror.close()
                raise
            self._failed(exc)  # a full disk is a condition of the moment: start, hold in memory, retry
            self._reopen_at = time.monotonic() + REOPEN_EVERY_S
        # Without a spool open, numbering still goes on from the highest counter saved: never a number twice.
        self._last_sequence = (self._spool.last_sequence if self._spool is not None
                               else max(stored_last_sequence(path), self._mirror.read()))

    # ------------------------------------------------------------------ the publisher's side
    def add(self, verdict: str, make_payload: PayloadBuilder) -> int:
        """Number a result and keep it: in the spool, or in memory when the spool cannot be written.

        Returns:
            The sequence number. A ``make_payload`` error propagates and uses up no number.
        """
        with self._lock:
            spool = self._usable_spool()
            if spool is None:
                payload = make_payload(self._last_sequence + 1, True)
                self._last_sequence += 1
                return self._hold(SpoolEntry(self._last_sequence, verdict, payload))
            try:
                self._last_sequence = spool.append(verdict, lambda sequence: make_payload(sequence, False))
            except SpoolError as exc:
                self._last_sequence = sequence = exc.sequence
                if exc.corrupt and self._replace_damaged():
                    return self._store(SpoolEntry(sequence, verdict, make_payload(sequence, False)), make_payload)
                self._failed(exc)
                return self._hold(SpoolEntry(sequence, verdict, make_payload(sequence, True)))
            self._recovered()
            return self._last_sequence

    def _store(self, entry: SpoolEntry, make_payload: PayloadBuilder) -> int:
        """Store an already numbered result in the spool, or hold it (rebuilt as unspooled) when that fails."""
        with self._lock:
            if self._spool is not None:
                try:
                    self._spool.put(entry)
                    return entry.sequence
                except SpoolError as exc:
                    self._failed(exc)
            return self._hold(SpoolEntry(entry.sequence, entry.verdict, make_payload(entry.sequence, True)))

    def number(self) -> int:
        """A sequence number without keeping anything (publishing disabled); saved in the spool when it can be."""
        with self._lock:
            spool = self._usable_spool()
            if spool is None:
                self._last_sequence += 1
                self._mirror.write(self._last_sequence)
                return self._last_sequence
            try:
                self._last_sequence = spool.reserve()
            except SpoolError as exc:
                self._last_sequence = exc.sequence
                self._mirror.write(self._last_sequence)
                self._failed(exc)
            else:
                self._recovered()
            return self._last_sequence

    def peek(self, after: int, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` pending results with a sequence above ``after``, oldest first, from spool and memory."""
        with self._lock:
            spooled: list[SpoolEntry] = []
            if self._spool is not None:
                try:
                    spooled = self._spool.peek(after, limit)
                except SpoolError as exc:
                    if exc.corrupt and self._replace_damaged():
                        return []  # the sender starts over (``resets``)
                    self._failed(exc)
            held = []
            for sequence, entry in self._held.items():
                if len(held) >= limit:
                    break
                if sequence > after:
                    held.append(entry)
        return sorted(spooled + held, key=lambda entry: entry.sequence)[:limit]

    def remove(self, sequences: list[int]) -> None:
        """Forget results the broker acknowledged (deletions that fail are retried with the next batch)."""
        with self._lock:
            in_spool = [sequence for sequence in sequences if not self._release(sequence)]
            retry = in_spool + sorted(self._unremoved)
            if not retry or self._spool is None:
                return
            try:
                self._spool.remove(retry)
            except SpoolError as exc:
                if exc.corrupt and self._replace_damaged():
                    return
                if not self._unremoved:  # once per episode
                    log.warning("cannot delete acknowledged results from the spool; will retry",
                                extra=kv(count=len(retry), error=str(exc)))
                if len(self._unremoved) < MAX_UNREMOVED:
                    self._unremoved.update(in_spool)
                return
            self._unremoved.clear()

    def __len__(self) -> int:
        spooled = len(self._spool) if self._spool is not None else 0
        return max(0, spooled - len(self._unremoved)) + len(self._held)

    @property
    def last_sequence(self) -> int:
        return self._last_sequence

    @property
    def health(self) -> OutboxHealth:
        with self._lock:
            dropped = self._spool.dropped_pass if self._spool is not None else 0
            return OutboxHealth(len(self), len(self._held), self._unspooled, self._lost_pass, self._lost_fail,
                                dropped, self._quarantined, self._storage_error, self._last_sequence)

    def close(self) -> None:
        """Close the spool; results only memory held are lost now, and said so."""
        with self._lock:
            self._closed = True
            if self._held:
                fails = sum(entry.verdict != DISCARDABLE for entry in self._held.values())
                self._lost_fail += fails
                self._lost_pass += len(self._held) - fails
                log.error("stopping with results that were never stored nor acknowledged: they are lost",
                          extra=kv(results=len(self._held), fail=fails, first=next(iter(self._held)),
                                   last=next(reversed(self._held))))
                self._held.clear()
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            self._mirror.close()

    # ------------------------------------------------------------------ memory
    def _hold(self, entry: SpoolEntry) -> int:
        self._mirror.write(max(entry.sequence, self._last_sequence))
        self._unspooled += 1
        self._held[entry.sequence] = entry
        self._held_bytes += len(entry.payload)
        if entry.verdict == DISCARDABLE:
            self._held_pass.append(entry.sequence)
        while self._held_bytes > self.hold_max_bytes and len(self._held) > 1:
            self._give_up_oldest()
        return entry.sequence

    def _give_up_oldest(self) -> None:
        """Memory is full: let the oldest PASS go, or the oldest FAIL when no PASS is held."""
        while self._held_pass and self._held_pass[0] not in self._held:
            self._held_pass.popleft()
        sequence = self._held_pass.popleft() if self._held_pass else next(iter(self._held))
        entry = self._held.pop(sequence)
        self._held_bytes -= len(entry.payload)
        if entry.verdict == DISCARDABLE:
            self._lost_pass += 1
            return
        self._lost_fail += 1
        log.error("result memory full while the spool cannot be written: a FAIL result is lost (a gap in the "
                  "sequence)", extra=kv(sequence=sequence, held=len(self._held), lost_fail=self._lost_fail))

    def _release(self, sequence: int) -> bool:
        """Drop an acknowledged result from memory; False when memory did not hold it."""
        entry = self._held.pop(sequence, None)
        if entry is None:
            return False
        self._held_bytes -= len(entry.payload)
        return True

    # ------------------------------------------------------------------ spool trouble and recovery
    def _failed(self, exc: Exception) -> None:
        message = f"the result spool cannot be written: {exc}"
        if self._storage_error is None:
            log.error("result spool failing: results are sent without a spool copy and held in memory "
                      f"(at most {self.hold_max_bytes >> 20} MiB) until it works again", extra=kv(error=str(exc)))
        self._storage_error = message

    def _recovered(self) -> None:
        """A spool write worked: move what memory held into the spool."""
        if self._storage_error is None and not self._held:
            return
        moved = 0
        for entry in list(self._held.values()):
            try:
                self._spool.put(entry)
            except SpoolError as exc:
                self._failed(exc)
                return
            self._release(entry.sequence)
            moved += 1
        if self._storage_error is not None:
            log.warning("result spool writable again", extra=kv(moved_from_memory=moved, unspooled=self._unspooled))
        self._storage_error = None

    def _usable_spool(self) -> Spool | None:
        """The open spool; with none (a replacement failed), try again every ``REOPEN_EVERY_S``.

        Raises:
            SpoolError: The outbox is closed (a result after ``stop``: a bug in the caller, not a storage fault).
        """
        if self._closed:
            raise SpoolError(f"cannot read the result spool {self.path}: it is closed (the publisher has stopped)")
        if self._spool is None and time.monotonic() >= self._reopen_at:
            self._reopen_at = time.monotonic() + REOPEN_EVERY_S
            try:
                self._spool = self._open(self._last_sequence)
                self.resets += 1
            except SpoolError as exc:
                self._failed(exc)
        return self._spool

    def _open(self, last_sequence: int) -> Spool:
        last_sequence = max(last_sequence, self._mirror.read())
        try:
            return Spool(self.path, self.max_bytes, self.sync, last_sequence)
        except SpoolError as exc:
            if not exc.corrupt:
                raise
            log.error("result spool damaged at start", extra=kv(path=str(self.path), error=str(exc)))
        return self._new_spool_from_damaged(last_sequence)

    def _replace_damaged(self) -> bool:
        """The open spool turned out damaged: replace it. False (and no spool open) when that failed."""
        old, self._spool = self._spool, None
        try:
            old.close()
        except Exception:  # noqa: BLE001 - a damaged file may fail to close; it is moved aside next either way
            log.debug("closing the damaged spool failed", exc_info=True)
        try:
            self._spool = self._new_spool_from_damaged(max(old.last_sequence, self._last_sequence))
        except (SpoolError, OSError) as exc:
            self._failed(exc)
            return False
        self.resets += 1
        return True

    def _new_spool_from_damaged(self, last_sequence: int) -> Spool:
        """Move the damaged file aside, start a new spool numbering after the old one, replay its readable rows."""
        moved = quarantine(self.path)
        entries, recorded = salvage(moved)
        readable = [entry for entry in entries if _readable(entry)]
        spool = Spool(self.path, self.max_bytes, self.sync, max(recorded, last_sequence))
        for entry in readable:
            spool.put(entry)
        self._quarantined += 1
        log.error("result spool was damaged: moved aside, a new one started, its readable results replayed",
                  extra=kv(damaged=str(moved), replayed=len(readable), unreadable=len(entries) - len(readable),
                           last_sequence=spool.last_sequence))
        return spool
