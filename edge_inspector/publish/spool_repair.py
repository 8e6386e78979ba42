"""A damaged result spool: move it aside and read back whatever rows can still be read.

A spool can be damaged by a failing flash card, a power cut on storage that lies about flushing, or a stray write.
The publisher (``publish.outbox``) then starts a new spool and replays the old one's readable rows into it; the
damaged file stays next to the new one for inspection.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge_inspector.publish.spool import SpoolEntry


def quarantine(path: str | Path) -> Path:
    """Move a damaged spool (and its WAL and shared-memory files) aside, next to it, so a new one can start.

    Returns:
        The new name of the damaged file: ``<name>.damaged-<UTC time>``, kept for inspection.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target


def salvage(path: str | Path, skip_limit: int = 1 << 24) -> tuple[list[SpoolEntry], int]:
    """Every row that can still be read from a damaged spool, oldest first, and the highest sequence it records.

    Rows in a damaged page cannot be read; the scan steps over them (probing ever further ahead, then back to the
    first readable row) and goes on with the rest.

    Args:
        path: The damaged file (read only, never changed).
        skip_limit: Give up when no row can be read within this many sequence numbers past the last good one.
    """
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], 0
    try:
        return _salvage_rows(db, skip_limit)
    finally:
        db.close()


def _rows_from(db: sqlite3.Connection, first: int, limit: int = 256) -> list[SpoolEntry] | None:
    """Up to ``limit`` rows from sequence ``first`` on, or None when that stretch cannot be read."""
    try:
        rows = db.execute("SELECT sequence, verdict, payload FROM entries WHERE sequence >= ? ORDER BY sequence "
                          "LIMIT ?", (first, limit)).fetchall()
    except sqlite3.Error:
        return None
    return [SpoolEntry(int(s), str(v), bytes(p)) for s, v, p in rows]


def _salvage_rows(db: sqlite3.Connection, skip_limit: int) -> tuple[list[SpoolEntry], int]:
    try:
        recorded = int(db.execute("SELECT value FROM meta WHERE key = 'last_sequence'").fetchone()[0])
    except (sqlite3.Error, TypeError):
        recorded = 0
    entries: list[SpoolEntry] = []
    first = 1
    while True:
        # A batch that reaches into a damaged page fails as a whole: then go row by row up to that page.
        rows = _rows_from(db, first) or _rows_from(db, first, 1)
        if rows is None:  # the next row sits in a damaged page: find the next sequence from which rows read again
            first = _next_readable(db, first, skip_limit, recorded)
            if first is None:
                break
            continue
        if not rows:
            break
        entries.extend(rows)
        first = rows[-1].sequence + 1
    return entries, max([recorded] + [e.sequence for e in entries])


def _next_readable(db: sqlite3.Connection, bad: int, skip_limit: int, recorded: int) -> int | None:
    """The smallest sequence above ``bad`` from which rows can be read (probe doubling, then bisect back)."""
    step = 1
    while step <= skip_limit and (not recorded or bad + step <= recorded):
        if _rows_from(db, bad + step, 1) is not None:
            low, high = bad + step // 2, bad + step  # low: unreadable or == bad; high: readable
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if _rows_from(db, middle, 1) is not None else (middle, high)
            return high
        step *= 2
    return None
