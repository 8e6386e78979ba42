"""Fault injection (issue 15): what each fault costs in results, against a real Mosquitto and real file systems.

Every scenario starts a fresh Mosquitto, a PLC-side subscriber with a persistent session (QoS 1, deduplicating on
the sequence number, as deploy/MQTT.md asks), and a ``ResultPublisher`` that publishes results at a steady rate, a
FAIL every third; the fault is injected mid-run, then undone, and the run drains. Counted per scenario: results
sent (sequence numbers used), delivered (distinct sequence numbers the PLC got), FAILs sent and lost, duplicates
(repeats the PLC dropped), and what the publisher reports (unspooled, restarts, quarantined spools).

Storage faults use a tmpfs the script mounts (root needed; a scenario that cannot mount says so and is skipped).

    sudo nice -n 10 .venv/bin/python benchmarks/bench_faults.py              # every scenario, ~5 min
    .venv/bin/python benchmarks/bench_faults.py --only broker_stop nested_command

Writes benchmarks/results/faults_<stamp>.json and prints the table RELIABILITY.md shows.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the test fixtures (broker, subscriber, results, tmpfs) live in the repository

from edge_inspector.config import ArchiveSettings, MqttSettings  # noqa: E402
from edge_inspector.engines.records import new_record, script_command, write_record  # noqa: E402
from edge_inspector.publish.archive import Archive  # noqa: E402
from edge_inspector.publish.broker import Topics  # noqa: E402
from edge_inspector.publish.mqtt import ResultPublisher  # noqa: E402
from edge_inspector.publish.spool import spool_path  # noqa: E402
from edge_inspector.results import Verdict  # noqa: E402
from tests.fixtures.broker import MosquittoBroker, Subscriber, find_mosquitto  # noqa: E402
from tests.fixtures.inspection_results import make_result  # noqa: E402
from tests.fixtures.small_fs import SmallFs  # noqa: E402
from tests.runtime.test_fault_storage import damage_one_leaf_page  # noqa: E402

STATION = "bench"
TOPICS = Topics.for_station("test", STATION)
RATE = 100.0
"""Results per second while a scenario publishes."""


@dataclass
class Outcome:
    scenario: str
    how: str
    sent: int = 0
    fail_sent: int = 0
    delivered: int = 0
    fail_lost: int = 0
    lost: int = 0
    duplicates: int = 0
    publisher: dict = field(default_factory=dict)
    note: str = ""


def verdict_of(i: int) -> Verdict:
    return Verdict.FAIL if i % 3 == 0 else Verdict.PASS


class Run:
    """One scenario's broker, PLC and bookkeeping, in a temporary folder."""

    def __init__(self, work: Path):
        self.work = work
        self.broker = MosquittoBroker(work / "broker", find_mosquitto())
        self.broker.start()
        self.plc = Subscriber(self.broker, [TOPICS.result], client_id="plc", clean_session=False)
        self.sent: dict[int, str] = {}

    def publisher(self, spool_dir: Path | None = None, **settings) -> ResultPublisher:
        publisher = ResultPublisher(MqttSettings(url=self.broker.url, topic_prefix="test", keepalive_s=5,
                                                 spool_dir=str(spool_dir or self.work / "spool"), **settings),
                                    STATION)
        publisher.start()
        return publisher

    def publish(self, publisher: ResultPublisher, first: int, count: int, at: dict | None = None) -> None:
        """``count`` results at ``RATE``; ``at`` maps an index to a fault to inject before publishing it."""
        for i in range(first, first + count):
            if at and i in at:
                at[i]()
            self.sent[publisher.publish(make_result(i, verdict_of(i)))] = verdict_of(i).value
            time.sleep(1.0 / RATE)

    def drain(self, publisher: ResultPublisher | None, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not set(self.sent) <= self.delivered():
            time.sleep(0.2)
        if publisher is not None:
            publisher.flush(5.0)

    def delivered(self) -> set[int]:
        return {json.loads(p)["sequence"] for p in self.plc.on(TOPICS.result)}

    def outcome(self, scenario: str, how: str, publisher: ResultPublisher | None, note: str = "") -> Outcome:
        payloads = self.plc.on(TOPICS.result)
        got = self.delivered()
        fails = {s for s, v in self.sent.items() if v != "PASS"}
        health = publisher.health if publisher is not None else None
        reported = {} if health is None else {k: getattr(health, k) for k in (
            "unspooled", "lost_pass", "lost_fail", "restarts", "callback_errors", "quarantined", "pending")}
        return Outcome(scenario, how, len(self.sent), len(fails), len(got & set(self.sent)), len(fails - got),
                       len(set(self.sent) - got), len(payloads) - len(set(json.loads(p)["sequence"]
                                                                          for p in payloads)), reported, note)

    def close(self) -> None:
        self.plc.close()
        self.broker.stop()


def later(seconds: float, action) -> None:
    threading.Timer(seconds, action).start()


# ------------------------------------------------------------------ scenarios
def broker_stop(run: Run) -> Outcome:
    publisher = run.publisher()
    run.publish(publisher, 0, 1200, at={400: lambda: (run.broker.stop(), later(15, run.broker.start))})
    run.drain(publisher)
    publisher.stop()
    return run.outcome("broker_stop", "Mosquitto stopped (SIGTERM) for 15 s mid-run, 1200 results", publisher)


def broker_kill(run: Run) -> Outcome:
    def crash():
        run.broker.send_signal(signal.SIGKILL)
        run.broker.stop()
        later(15, run.broker.start)

    publisher = run.publisher()
    run.publish(publisher, 0, 1200, at={400: crash})
    run.drain(publisher)
    publisher.stop()
    return run.outcome("broker_kill", "Mosquitto killed (SIGKILL) mid-run, back after 15 s, 1200 results", publisher,
                       "a result the broker had acknowledged but not yet forwarded dies with it (the broker's job)")


def broker_freeze(run: Run) -> Outcome:
    def freeze():
        run.broker.send_signal(signal.SIGSTOP)
        later(20, lambda: run.broker.send_signal(signal.SIGCONT))

    publisher = run.publisher()
    run.publish(publisher, 0, 1200, at={400: freeze})
    run.drain(publisher)
    publisher.stop()
    return run.outcome("broker_freeze", "Mosquitto frozen (SIGSTOP) for 20 s mid-run (TCP up, no answers)", publisher)


def publisher_kill(run: Run) -> Outcome:
    """The publishing process SIGKILLed three times mid-stream (tests/fixtures/publisher_process.py)."""
    spool = run.work / "spool"
    command = [sys.executable, "-m", "tests.fixtures.publisher_process", run.broker.url, str(spool), STATION]
    total = 0
    for round_ in range(4):
        process = subprocess.Popen(command, cwd=HERE.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        process.stdout.readline()  # started
        process.stdin.write("publish 300\n")
        process.stdin.flush()
        process.stdout.readline()  # done
        for i in range(300):  # its own results: sequence numbers go on from the spool's counter
            run.sent[total + i + 1] = "FAIL" if i % 5 == 0 else "PASS"
        total += 300
        if round_ < 3:
            process.kill()
        else:
            run.drain(None)
            process.kill()
        process.wait()
    return run.outcome("publisher_kill", "publisher process SIGKILLed 3 times while sending, 4 x 300 results", None)


def spool_full(run: Run) -> Outcome:
    fs = SmallFs(run.work / "fs", 1024)
    try:
        publisher = run.publisher(fs.path / "spool")
        run.publish(publisher, 0, 2500, at={200: fs.fill, 2000: fs.free})
        run.drain(publisher)
        publisher.stop()
    finally:
        fs.unmount()
    return run.outcome("spool_full", "spool on a 1 MB tmpfs filled up after 200 results, freed after 2000", publisher)


def spool_full_broker_down(run: Run) -> Outcome:
    fs = SmallFs(run.work / "fs", 1024)
    try:
        publisher = run.publisher(fs.path / "spool")

        def both():
            fs.fill()
            run.broker.stop()
            later(10, run.broker.start)

        run.publish(publisher, 0, 1500, at={100: both, 1400: fs.free})
        run.drain(publisher)
        publisher.stop()
    finally:
        fs.unmount()
    return run.outcome("spool_full_broker_down", "spool disk full and Mosquitto down for 10 s at once", publisher)


def spool_damaged(run: Run) -> Outcome:
    run.broker.stop()
    first = run.publisher()
    run.publish(first, 0, 400)
    first.stop(drain_timeout=0)
    damage_one_leaf_page(spool_path(run.work / "spool", STATION))
    run.broker.start()
    publisher = run.publisher()
    run.publish(publisher, 400, 400)
    run.drain(publisher, 30)
    publisher.stop()
    return run.outcome("spool_damaged", "one page of a spool holding 400 unsent results overwritten, then restart",
                       publisher, "rows in the overwritten page are destroyed by the fault itself")


def nested_command(run: Run) -> Outcome:
    publisher = run.publisher()
    nested = b'{"kind": "pause", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    run.publish(publisher, 0, 1200, at={400: lambda: run.plc.publish(TOPICS.cmd, nested)})
    run.drain(publisher)
    publisher.stop()
    return run.outcome("nested_command", "a 200 KB deeply nested JSON command mid-run", publisher)


def network_thread_death(run: Run) -> Outcome:
    publisher = run.publisher()

    def crash(*args):
        raise RuntimeError("injected: paho's network thread ends here")

    def kill_network_thread():  # an exception escaping every guard (injected below them, into paho itself)
        client = publisher._session._client
        client.suppress_exceptions = False
        client.on_message = crash
        run.plc.publish(TOPICS.cmd, b'{"kind": "pause"}')

    run.publish(publisher, 0, 1200, at={400: kill_network_thread})
    run.drain(publisher)
    publisher.stop()
    return run.outcome("network_thread_death", "paho's network thread killed by an injected exception", publisher)


def archive_full(run: Run) -> Outcome:
    """Not MQTT: the archive on a 3 MB tmpfs; FAIL frames that could not be written are the loss."""
    fs = SmallFs(run.work / "fs", 3 * 1024)
    try:
        archive = Archive(ArchiveSettings(dir=str(fs.path), max_mb=1000, min_free_mb=0, pass_sample_rate=1))
        for i in range(60):
            result = make_result(i, verdict_of(i), with_images=True)
            frame = np.random.default_rng(i).integers(0, 255, (256, 256, 3), dtype=np.uint8)
            archive.add(replace(result, sequence=i + 1, frame=frame, overlay=frame.copy()))
        archive.flush()
        note = (f"FAIL write errors {archive.errors}; PASS not archived for lack of room {archive.skipped_full}; "
                f"groups deleted to make room {archive.deleted} (PASS first); kept at the end: "
                f"{len(list(fs.path.rglob('*_FAIL_*.json')))} FAIL, {len(list(fs.path.rglob('*_PASS_*.json')))} PASS")
        archive.close()
    finally:
        fs.unmount()
    return Outcome("archive_full", "archive on a 3 MB tmpfs, 60 frames (1 in 3 FAIL)", 60, 20,
                   fail_lost=archive.errors, note=note)


SCENARIOS = {f.__name__: f for f in (broker_stop, broker_kill, broker_freeze, publisher_kill, spool_full,
                                     spool_full_broker_down, spool_damaged, nested_command,
                                     network_thread_death, archive_full)}


def table(outcomes: list[Outcome]) -> str:
    lines = ["| fault | sent | delivered | FAIL sent | FAIL lost | lost | duplicates | publisher reports |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        reported = ", ".join(f"{k} {v}" for k, v in o.publisher.items() if v) or "-"
        lines.append(f"| {o.how} | {o.sent} | {o.delivered} | {o.fail_sent} | {o.fail_lost} | {o.lost} | "
                     f"{o.duplicates} | {reported}{'; ' + o.note if o.note else ''} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run these scenarios only")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if find_mosquitto() is None:
        print("mosquitto not installed (deploy/install.sh dev installs it)", file=sys.stderr)
        return 2
    outcomes = []
    for name in args.only or SCENARIOS:
        print(f"{name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"fault-{name}-") as tmp:
            run = Run(Path(tmp))
            try:
                outcomes.append(SCENARIOS[name](run))
            except pytest.skip.Exception as skipped:
                outcomes.append(Outcome(name, "skipped", note=str(skipped)))
            except Exception as exc:  # one broken scenario must not cost the others' figures
                outcomes.append(Outcome(name, "failed to run", note=f"{type(exc).__name__}: {exc}"))
            finally:
                run.close()
        print(f"  {outcomes[-1]}", flush=True)
    print(table(outcomes))
    write_record(args.out, "faults", new_record(script_command(), "paho-mqtt", rate_per_s=RATE,
                                                outcomes=[o.__dict__ for o in outcomes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
