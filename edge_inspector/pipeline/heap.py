"""glibc malloc settings that keep a many-threaded line's memory flat over weeks.

The line allocates frame-sized arrays (hundreds of kilobytes each) on one thread and frees them on another (capture,
inference, publishing, MQTT and the web server each have threads of their own). With glibc's defaults every thread
may get an arena of its own (up to 8 per core) and large blocks are kept in those arenas once one has been freed;
the process's resident memory then climbs in steps of a few megabytes for hours (seen in the soak,
``RELIABILITY.md``). Two settings stop that: at most two arenas, and blocks from 128 KiB up always taken from,
and given back to, the kernel directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

from edge_inspector.log import kv

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 2, "MALLOC_ARENA_MAX"), (M_MMAP_THRESHOLD, 128 * 1024, "MALLOC_MMAP_THRESHOLD_"))
"""(mallopt parameter, value, the environment variable that sets it too: one given there is left alone)."""


def settle_heap() -> bool:
    """Apply ``SETTINGS`` through glibc's ``mallopt``; False where there is no glibc (musl, macOS) to tune."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = {}
    for parameter, value, variable in SETTINGS:
        if variable not in os.environ and mallopt(parameter, value) == 1:
            applied[variable] = value
    log.debug("malloc settings for a long run", extra=kv(**applied))
    return bool(applied)
