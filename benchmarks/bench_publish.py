"""Publishing benchmark (issue 3): what ``ResultPublisher`` costs the line, and how fast it catches up after an outage.

Against a real Mosquitto started on a free local port, with a subscriber on the result topic:

* ``publish_p50_ms`` / ``publish_p99_ms``: the ``publish(result)`` call the loop pays per part (message build +
  durable spool write, ``mqtt.spool_sync`` full by default);
* ``delivery_p50_ms`` / ``delivery_p99_ms``: from ``publish()`` to the subscriber receiving it, at a steady rate;
* ``sustained_msgs_per_s``: results published back to back, until the subscriber has them all;
* ``reconnect_s`` and ``replay_msgs_per_s``: how long the publisher takes to notice the broker is back, and how fast
  it then sends the results spooled while the broker was down.

    .venv/bin/python benchmarks/bench_publish.py                 # 2000 results, local Mosquitto
    .venv/bin/python benchmarks/bench_publish.py --count 500 --mask --sync normal

Writes benchmarks/results/publish_<stamp>.json (command, date, machine, figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the test fixtures (broker, subscriber, results) live in the repository

from edge_inspector.config import MqttSettings  # noqa: E402
from edge_inspector.engines.latency import LatencyStats  # noqa: E402
from edge_inspector.engines.records import new_record, script_command, write_record  # noqa: E402
from edge_inspector.publish.broker import Topics  # noqa: E402
from edge_inspector.publish.mqtt import ResultPublisher  # noqa: E402
from edge_inspector.results import Verdict  # noqa: E402
from tests.fixtures.broker import MosquittoBroker, Subscriber, find_mosquitto  # noqa: E402
from tests.fixtures.inspection_results import make_result  # noqa: E402

STATION = "bench"


def percentiles(values_ms: list[float]) -> tuple[float, float]:
    stats = LatencyStats.of(values_ms)
    return round(stats.p50, 4), round(stats.p99, 4)


def results(count: int, mask: bool):
    return [make_result(i, Verdict.FAIL if i % 10 == 0 else Verdict.PASS, with_images=mask) for i in range(count)]


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the subscriber did not receive every result")
        time.sleep(0.002)


def steady_rate(publisher: ResultPublisher, args: argparse.Namespace, received_at: dict[int, float]) -> dict:
    """Publish ``args.count`` results at ``args.rate`` per second: what ``publish()`` costs the loop and how long a
    result takes to reach the subscriber (p50/p99, ms)."""
    call_ms, sent_at = [], {}
    period = 1.0 / args.rate
    next_at = time.perf_counter()
    for result in tqdm(results(args.count, args.mask), desc="steady rate", unit="msg"):
        while time.perf_counter() < next_at:
            time.sleep(0.0005)
        start = time.perf_counter()
        sequence = publisher.publish(result)
        call_ms.append((time.perf_counter() - start) * 1e3)
        sent_at[sequence] = start
        next_at += period
    wait_until(lambda: all(s in received_at for s in sent_at), 120)
    figures = {}
    figures["publish_p50_ms"], figures["publish_p99_ms"] = percentiles(call_ms)
    figures["delivery_p50_ms"], figures["delivery_p99_ms"] = percentiles(
        [(received_at[s] - t) * 1e3 for s, t in sent_at.items()])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="results per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="results per second in the delivery phase")
    parser.add_argument("--mask", action="store_true", help="attach the defect mask (base64 PNG) to FAIL results")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="mqtt.spool_sync")
    args = parser.parse_args()

    binary = find_mosquitto()
    if binary is None:
        print("mosquitto not installed (deploy/install.sh dev installs it)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench_publish_"))
    broker = MosquittoBroker(work / "broker", binary)
    broker.start()
    topics = Topics.for_station("bench", STATION)
    subscriber = Subscriber(broker, [topics.result])
    received_at: dict[int, float] = {}
    on_message = subscriber.client.on_message

    def timed(client, userdata, message):
        received_at.setdefault(json.loads(message.payload)["sequence"], time.perf_counter())
        on_message(client, userdata, message)

    subscriber.client.on_message = timed
    settings = MqttSettings(url=broker.url, topic_prefix="bench", spool_dir=str(work / "spool"), include_mask=args.mask,
                            spool_sync=args.sync)
    publisher = ResultPublisher(settings, STATION, model_id="bench")
    publisher.start()
    wait_until(lambda: publisher.connected, 10)
    figures: dict[str, object] = {}

    # 1. Steady rate: publish() cost and delivery latency.
    figures.update(steady_rate(publisher, args, received_at))

    # 2. Back to back: sustained throughput end to end.
    batch = results(args.count, args.mask)
    start = time.perf_counter()
    sequences = [publisher.publish(result) for result in tqdm(batch, desc="back to back", unit="msg")]
    wait_until(lambda: all(s in received_at for s in sequences), 300)
    figures["sustained_msgs_per_s"] = round(len(sequences) / (time.perf_counter() - start), 1)

    # 3. Replay after an outage.
    broker.stop()
    wait_until(lambda: not publisher.connected, 10)
    sequences = [publisher.publish(result) for result in tqdm(results(args.count, args.mask), desc="spooling")]
    broker.start()
    start = time.perf_counter()
    wait_until(lambda: publisher.connected, 60)
    # paho's reconnect backoff: the first retry comes 1 s after the drop, then the wait doubles (up to 10 s).
    figures["reconnect_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    wait_until(lambda: all(s in received_at for s in sequences), 300)
    figures["replay_msgs_per_s"] = round(len(sequences) / (time.perf_counter() - start), 1)
    publisher.stop()
    subscriber.close()
    broker.stop()

    record = new_record(script_command(), "paho-mqtt", **{
        "benchmark": "publish",
        "broker": "mosquitto (local, started by the benchmark)",
        "count": args.count, "rate_per_s": args.rate, "mask": args.mask,
        "spool": f"SQLite WAL, synchronous={args.sync.upper()}, tmp folder",
        **figures,
    })
    print(json.dumps(figures, indent=2))
    write_record(HERE / "results", "publish", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
