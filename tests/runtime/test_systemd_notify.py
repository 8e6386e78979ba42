"""sd_notify: a line under systemd (``Type=notify``, ``WatchdogSec=``) says READY once it runs, sends watchdog
keep-alives while it makes progress, and STOPPING at the end; a hung loop stops the keep-alives."""

import socket
import time

import cv2

from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.cli.run import run_line
from edge_inspector.config import load_run_config
from edge_inspector.ops.systemd import SystemdNotifier
from tests.fixtures.bundles import make_tiny_bundle


def listen(tmp_path, monkeypatch, watchdog_s: float) -> socket.socket:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(watchdog_s * 1e6)))
    return sock


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            return messages


def test_a_running_line_notifies_ready_watchdog_and_stopping(tmp_path, monkeypatch):
    sock = listen(tmp_path, monkeypatch, watchdog_s=0.2)
    bundle = make_tiny_bundle(tmp_path / "bundle", 64, 64)
    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), PartMaker(size=64, seed=1).make(None).image)
    config = load_run_config(None, [f"model={bundle.path}", f"source={folder}", "capture.loop=true",
                                    "capture.fps=20", "capture.max_frames=12", "mqtt.enabled=false",
                                    "archive.enabled=false"])
    run_line(config, quiet=True)
    messages = received(sock)
    assert messages[0].startswith("READY=1") and messages[-1] == "STOPPING=1"
    assert messages.count("WATCHDOG=1") >= 2  # 0.6 s of run at one keep-alive per 0.1 s


class LoopStandIn:
    """The two things the notifier reads of a loop: counts and failure (what a hung engine looks like outside)."""

    failure = None

    def __init__(self, frames_read: int, judged: int):
        self.counts = {"frames_read": frames_read, "judged": judged}
        self.stats = self
        self.reader = type("Reader", (), {"name": "stand-in"})()

    def snapshot(self) -> dict:
        return {"counts": dict(self.counts)}


def test_a_loop_with_parts_waiting_and_none_judged_counts_as_hung():
    loop = LoopStandIn(frames_read=5, judged=1)
    notifier = SystemdNotifier(loop, stuck_after_s=0.2)
    assert notifier.healthy()  # just started: no time without progress yet
    time.sleep(0.3)
    assert not notifier.healthy()  # 4 parts waiting, none judged for 0.3 s: no more keep-alives
    loop.counts["judged"] = 2
    assert notifier.healthy()  # progress again
    idle = LoopStandIn(frames_read=3, judged=3)  # nothing waiting (paused, or no parts coming): not hung
    idle_notifier = SystemdNotifier(idle, stuck_after_s=0.2)
    time.sleep(0.3)
    assert idle_notifier.healthy()
