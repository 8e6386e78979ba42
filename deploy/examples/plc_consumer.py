#!/usr/bin/env python3
"""A PLC-side consumer of edge-inspector results: what a line controller or PLC gateway must do, in one file.

- **Persistent session, QoS 1** (fixed ``--client-id``, ``clean_session=False``): the broker keeps the subscription
  and queues results while this program or the broker restarts; paho reconnects on its own.
- **De-duplication on (station, sequence)**: delivery is at-least-once, so a result can arrive twice.
- **Sequence gaps are reported**: a station numbers its results 1, 2, 3, ...; a missing number is a result that
  never arrived (deploy/MQTT.md, "Delivery"). A late arrival that fills a reported gap is accepted, not dropped.
- **Rejects are acknowledged only once handled**: messages are acknowledged to the broker by hand (``manual_ack``)
  after the reject has been passed on and the state saved, so a crash in between means redelivery, not a lost
  reject. FAIL and UNKNOWN (the fail-safe verdict) are both rejects.
- ``--state FILE`` keeps the last sequence per station across restarts of this program.

Every event is one JSON line on stdout (``result``, ``reject``, ``duplicate``, ``gap``, ``late``, ``status``,
``malformed``, ``connected``, ``disconnected``); replace ``Consumer.emit``/``Consumer.reject`` with the PLC write.
Only paho-mqtt is needed (``pip install paho-mqtt``)::

    EDGE_INSPECTOR_MQTT_USERNAME=plc EDGE_INSPECTOR_MQTT_PASSWORD=... \\
      python deploy/examples/plc_consumer.py --url mqtts://broker:8883 --ca-file ca.pem --client-id plc-gw-1

If a station's spool file is deleted its sequence starts again at 1: stop this program and remove that station
from the state file, or its results are taken for duplicates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("plc_consumer")
REJECT_VERDICTS = {"FAIL", "UNKNOWN"}
MAX_OPEN_GAPS = 10_000
"""Missing sequence numbers remembered per station (for late arrivals); the oldest are forgotten first."""


class Consumer:
    """De-duplicates results per station, reports gaps and rejects, and remembers where each station was.

    Args:
        state_path: JSON file with ``{station: {"last": n, "missing": [...]}}``, or None to keep it in memory.
        out: Where the JSON event lines go.
    """

    def __init__(self, state_path: Path | None, out=sys.stdout):
        self.state_path = state_path
        self.out = out
        self.stations: dict[str, dict] = {}
        if state_path and state_path.exists():
            self.stations = json.loads(state_path.read_text())

    def emit(self, event: str, **fields) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    def reject(self, doc: dict) -> None:
        """Pass a reject on to the machine (here: an event line; on a line: the diverter, the PLC tag)."""
        self.emit("reject", station=doc["station"], sequence=doc["sequence"], part_id=doc.get("part_id"),
                  verdict=doc["verdict"], error=doc.get("error"))

    def handle_result(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            station, sequence, verdict = doc["station"], doc["sequence"], doc["verdict"]
            if not isinstance(station, str) or not isinstance(sequence, int) or isinstance(sequence, bool):
                raise TypeError("station must be a string and sequence an integer")
        except (ValueError, KeyError, TypeError) as exc:
            self.emit("malformed", error=str(exc)[:200])
            return
        seen = self.stations.setdefault(station, {"last": 0, "missing": []})
        if sequence in seen["missing"]:
            seen["missing"].remove(sequence)
            self.emit("late", station=station, sequence=sequence)
        elif sequence <= seen["last"]:
            self.emit("duplicate", station=station, sequence=sequence)
            return
        else:
            if seen["last"] and sequence > seen["last"] + 1:
                first, last = seen["last"] + 1, sequence - 1
                self.emit("gap", station=station, first_missing=first, last_missing=last, count=last - first + 1)
                seen["missing"] = (seen["missing"] + list(range(first, last + 1)))[-MAX_OPEN_GAPS:]
            seen["last"] = sequence
        self.emit("result", station=station, sequence=sequence, part_id=doc.get("part_id"), verdict=verdict)
        if verdict in REJECT_VERDICTS:
            self.reject(doc)
        self.save()

    def save(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stations))
        os.replace(tmp, self.state_path)  # atomic: a crash leaves the old state or the new one


def make_client(args: argparse.Namespace, consumer: Consumer, tls: bool, failed: threading.Event) -> paho.Client:
    """A paho client with a persistent session that feeds ``consumer``; sets ``failed`` on a message it could not
    handle (left unacknowledged, so the broker delivers it again to the next run)."""
    topics = [(f"{args.prefix}/+/result", 1), (f"{args.prefix}/+/status", 1)]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False,
                         manual_ack=True)
    if tls:
        client.tls_set(ca_certs=args.ca_file)  # None: the system CAs
    username = os.environ.get(args.username_env)
    if username:
        client.username_pw_set(username, os.environ.get(args.password_env))
    client.reconnect_delay_set(1, 10)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            consumer.emit("disconnected", reason=str(reason_code))
            return
        consumer.emit("connected", session_present=bool(flags.session_present))
        if not flags.session_present:  # a new session (first run, or a broker without persistence)
            client.subscribe(topics)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        consumer.emit("disconnected", reason=str(reason_code))

    def on_message(client, userdata, message):
        try:
            if message.topic.endswith("/result"):
                consumer.handle_result(message.payload)
            else:
                doc = json.loads(message.payload or b"{}")
                consumer.emit("status", topic=message.topic, state=doc.get("state"), retained=bool(message.retain))
        except Exception:  # e.g. the state file cannot be written: stop rather than acknowledge a lost reject
            log.exception("could not handle a message on %s; stopping without acknowledging it", message.topic)
            failed.set()
            return
        client.ack(message.mid, message.qos)  # only now: handled, and the state saved

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--ca-file", help="CA certificate that signed the broker's (mqtts://)")
    parser.add_argument("--prefix", default="edge-inspector", help="mqtt.topic_prefix of the stations")
    parser.add_argument("--client-id", required=True, help="fixed, unique id: the broker keeps this session")
    parser.add_argument("--state", type=Path, help="JSON file keeping the last sequence per station")
    parser.add_argument("--username-env", default="EDGE_INSPECTOR_MQTT_USERNAME")
    parser.add_argument("--password-env", default="EDGE_INSPECTOR_MQTT_PASSWORD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url = urlsplit(args.url)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        parser.error(f"--url {args.url!r} is not mqtt://host:port or mqtts://host:port")
    if url.scheme == "mqtts" and not args.ca_file:
        log.warning("mqtts:// without --ca-file: the broker is verified against the system CAs")

    consumer = Consumer(args.state)
    stop = threading.Event()  # set by a signal, or by a message that could not be handled
    failed = threading.Event()
    client = make_client(args, consumer, url.scheme == "mqtts", failed)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    client.connect_async(url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883), keepalive=30)
    client.loop_start()
    while not (stop.wait(0.2) or failed.is_set()):
        pass
    client.disconnect()
    client.loop_stop()
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
