"""systemd integration: readiness and watchdog keep-alives over sd_notify (``Type=notify``, ``WatchdogSec=``).

The protocol is one datagram per state change to the Unix socket named by ``$NOTIFY_SOCKET`` ("@..." is an abstract
socket); without that variable (not started by systemd) every call is a no-op. ``SystemdNotifier`` is a line
service: READY=1 once the line runs, WATCHDOG=1 every half ``$WATCHDOG_USEC`` for as long as the loop makes
progress, STOPPING=1 at the end. A loop that has parts waiting and judges none for ``stuck_after_s`` stops the
keep-alives, so systemd restarts a hung line, not only a crashed one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from edge_inspector.log import kv

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd; False when not running under systemd or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed", extra=kv(state=state, error=str(exc)))
        return False


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asks for (``$WATCHDOG_USEC``), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class SystemdNotifier:
    """READY, WATCHDOG and STOPPING notifications for a running line (a ``pipeline.line.Service``).

    Args:
        loop: the started ``InspectionLoop``.
        stuck_after_s: parts waiting and none judged for this long = hung: keep-alives stop.
    """

    def __init__(self, loop: Any, stuck_after_s: float = 30.0):
        self.loop, self.stuck_after_s = loop, stuck_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._judged, self._progress_at = -1, time.monotonic()

    def start(self) -> SystemdNotifier:
        notify(f"READY=1\nSTATUS=judging parts from {self.loop.reader.name}")
        interval = watchdog_interval_s()
        if interval:
            self._thread = threading.Thread(target=self._keep_alive, args=(interval,), name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        notify("STOPPING=1")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def healthy(self) -> bool:
        """The loop has not failed and is not stuck with parts waiting."""
        counts = self.loop.stats.snapshot()["counts"]
        judged = counts.get("judged", 0)
        pending = counts.get("frames_read", 0) - counts.get("dropped", 0) - judged
        if judged != self._judged:
            self._judged, self._progress_at = judged, time.monotonic()
        stuck = pending > 0 and time.monotonic() - self._progress_at > self.stuck_after_s
        return not (self.loop.failure or stuck)

    def _keep_alive(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.healthy():
                notify("WATCHDOG=1")
            else:
                log.error("line hung: watchdog keep-alives stopped", extra=kv(judged=self._judged))
