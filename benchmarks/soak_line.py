"""Soak test (issue 15): the demo line at a fixed rate for an hour or more, publishing to a real Mosquitto.

The line runs in a child process exactly as ``edge-inspector run`` builds it (``cli.run.run_line``: MQTT publisher,
frame archive, ops HTTP server), fed by the built-in demo line at ``--rate`` parts per second. This process starts
the broker, subscribes to the results like a PLC would, and samples the child every ``--every`` seconds: resident
memory, open file descriptors, threads, spool and archive size, /readyz. At the end it reports the RSS slope after
``--warmup`` (least squares, MB per hour), and what was sent, delivered, duplicated and lost.

    nice -n 10 .venv/bin/python benchmarks/soak_line.py --minutes 70 --rate 5

Writes benchmarks/results/soak_<stamp>.json (command, machine, every sample, the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the test fixtures (broker, subscriber) live in the repository

from edge_inspector.engines.records import new_record, script_command, write_record  # noqa: E402
from edge_inspector.publish.broker import Topics  # noqa: E402
from tests.fixtures.broker import MosquittoBroker, Subscriber, find_mosquitto, free_port  # noqa: E402

STATION = "soak"


def child(args: argparse.Namespace) -> None:
    """The line under test: the demo line at a fixed rate through the product's own composition."""
    from edge_inspector.capture.demo_line import DemoLine
    from edge_inspector.cli.run import run_line
    from edge_inspector.config import load_run_config
    from edge_inspector.log import setup_logging

    setup_logging("WARNING")
    config = load_run_config(None, [
        f"station={STATION}", "model=demo", f"mqtt.url={args.url}", f"mqtt.spool_dir={args.work}/spool",
        f"archive.dir={args.work}/archive", "archive.max_mb=64", "archive.min_free_mb=0",
        f"http.port={args.port}", "engine.intra_op_threads=1",
    ])
    parts = int(args.rate * args.minutes * 60)
    stats = run_line(config, source=DemoLine(config.capture, parts=parts, seed=11, interval_s=1.0 / args.rate),
                     quiet=True)
    print(json.dumps({"counts": stats["counts"]}), flush=True)


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _ready(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def sample(pid: int, work: Path, port: int, started: float, delivered: int) -> dict:
    status = _status(pid)
    return {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(status["VmRSS"] / 1024, 2),
            "threads": status["Threads"], "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "spool_bytes": _folder_bytes(work / "spool"), "archive_bytes": _folder_bytes(work / "archive"),
            "readyz": _ready(port), "delivered": delivered}


def rss_slope_mb_per_h(samples: list[dict], warmup_s: float) -> float | None:
    late = [s for s in samples if s["t_s"] >= warmup_s]
    if len(late) < 3:
        return None
    hours = np.array([s["t_s"] for s in late]) / 3600.0
    return float(np.polyfit(hours, np.array([s["rss_mb"] for s in late]), 1)[0])


class Counter:
    """The PLC side: results by sequence, with FAILs and repeats counted."""

    def __init__(self):
        self.first: dict[int, str] = {}
        self.repeats = 0
        self.lock = threading.Lock()

    def on_message(self, payload: bytes) -> None:
        doc = json.loads(payload)
        with self.lock:
            if doc["sequence"] in self.first:
                self.repeats += 1
            else:
                self.first[doc["sequence"]] = doc["verdict"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=70.0, help="how long the line runs (default 70)")
    parser.add_argument("--rate", type=float, default=5.0, help="parts per second (default 5)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=600.0, help="seconds left out of the RSS slope (default 600)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    binary = find_mosquitto()
    if binary is None:
        print("mosquitto not installed (deploy/install.sh dev installs it)", file=sys.stderr)
        return 2
    command = script_command()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker", binary)
        broker.start()
        topics = Topics.for_station("edge-inspector", STATION)
        counter = Counter()
        subscriber = Subscriber(broker, [topics.result], client_id="soak-plc", clean_session=False)
        subscriber.client.on_message = lambda client, userdata, message: counter.on_message(message.payload)
        port = free_port()
        line = subprocess.Popen([sys.executable, __file__, "--child", "--url", broker.url, "--work", str(work),
                                 "--port", str(port), "--minutes", str(args.minutes), "--rate", str(args.rate)],
                                stdout=subprocess.PIPE, text=True)
        started, samples = time.monotonic(), []
        while line.poll() is None:
            time.sleep(args.every)
            try:
                samples.append(sample(line.pid, work, port, started, len(counter.first)))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                break  # the child ended between poll and sample
            if len(samples) % max(1, int(60 / args.every)) == 0:
                print(json.dumps(samples[-1]), flush=True)
        output = line.stdout.read().strip().splitlines()
        if line.wait() != 0 or not output:
            raise SystemExit(f"the line under test failed (exit {line.returncode}); its error is above")
        stats = json.loads(output[-1])
        time.sleep(2.0)
        subscriber.close()
        broker.stop()
    counts = stats["counts"]
    judged_fail = counts.get("FAIL", 0) + counts.get("UNKNOWN", 0)
    delivered_fail = sum(v != "PASS" for v in counter.first.values())
    summary = {
        "rate_parts_per_s": args.rate, "minutes": args.minutes, "judged": counts.get("judged", 0),
        "delivered_unique": len(counter.first), "duplicates": counter.repeats,
        "fail_judged": judged_fail, "fail_delivered": delivered_fail, "fail_lost": judged_fail - delivered_fail,
        "rss_slope_mb_per_h_after_warmup": rss_slope_mb_per_h(samples, args.warmup), "warmup_s": args.warmup,
        "rss_mb_first_last": [samples[0]["rss_mb"], samples[-1]["rss_mb"]] if samples else None,
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)] if samples else None,
        "threads_min_max": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)] if samples
        else None,
        "spool_bytes_max": max(s["spool_bytes"] for s in samples) if samples else None,
        "readyz_not_200": sum(s["readyz"] != 200 for s in samples),
    }
    print(json.dumps(summary, indent=2))
    write_record(args.out, "soak", new_record(command, "onnxruntime", "paho-mqtt", summary=summary, samples=samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
