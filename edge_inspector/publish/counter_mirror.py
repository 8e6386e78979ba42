"""A second home for the sequence counter, for when the spool cannot be written.

A result the spool cannot take still uses up its sequence number (``outbox.py``). Were the process to end before the
spool works again, the next start would go on from the spool's older counter and hand those numbers out a second
time, to different results, which a consumer that deduplicates on the number would silently drop. So every number
used without the spool is also written into ``<spool>.counter``: a fixed-width line rewritten in place, which needs
no new disk space, so a full disk still takes it (a read-only or failed one cannot; that is logged).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_inspector.log import kv

log = logging.getLogger(__name__)

WIDTH = 21
"""Bytes of the counter line: 20 digits and a newline, always the same size so a rewrite never grows the file."""


class CounterMirror:
    """``<spool>.counter``: the highest sequence number used, kept where a full disk can still update it.

    Args:
        path: The counter file (created, one line, when there is room for it).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._failed = False
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._fd = None
            log.warning("cannot keep a copy of the sequence counter", extra=kv(path=str(self.path), error=str(exc)))
            return
        if os.fstat(self._fd).st_size < WIDTH:
            self.write(self.read())  # take the disk space now, while there is some

    def read(self) -> int:
        """The counter saved here (0 when none)."""
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, WIDTH, 0).strip() or 0)
        except (OSError, ValueError):
            return 0

    def write(self, sequence: int) -> None:
        """Rewrite the counter in place (no fsync: a crash of the process keeps it, as the page cache does)."""
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, f"{sequence:>{WIDTH - 1}}\n".encode(), 0)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once per episode
                self._failed = True
                log.error("cannot save the sequence counter either: after a restart before the spool works again, "
                          "numbers may be used twice", extra=kv(path=str(self.path), error=str(exc)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
