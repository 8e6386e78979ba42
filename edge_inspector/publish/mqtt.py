"""MQTT publishing with paho-mqtt 2.x (callback API v2): results, status, heartbeat and commands.

Delivery: ``publish(result)`` writes the result to the disk spool and returns at once. A publisher thread sends
spooled results oldest-first at the configured QoS (1 by default) and deletes each only after its PUBACK. paho
re-sends unacknowledged messages itself after a reconnect; anything still spooled when the process ends is sent
on the next start. That is at-least-once delivery in sequence order: a result whose PUBACK was lost to a crash or
an outage can arrive twice, with the same ``sequence``, so consumers deduplicate on (station, sequence).

Topics, under ``<topic_prefix>/<station>/``:
    result          one JSON ``ResultMessage`` per judged part (QoS 1)
    status          retained ``{"state": "online"|"offline", ...}``; the broker publishes "offline" (last will)
                    when the connection drops without a clean stop
    heartbeat       counters every ``heartbeat_s`` (QoS 0)
    cmd             commands in (see ``commands.py``)
    cmd/response    one answer per command: ``{"id", "kind", "ok", "result" | "error"}`` (QoS 1)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_inspector import __version__
from edge_inspector.config import MqttSettings, TlsSettings
from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.publish.broker import BrokerAddress, Topics, checked_tls, credentials, parse_broker_url
from edge_inspector.publish.commands import Command, answer
from edge_inspector.publish.schema import build_message, iso_utc
from edge_inspector.publish.spool import Spool, spool_path
from edge_inspector.results import InspectionResult, Verdict

log = logging.getLogger(__name__)

IN_FLIGHT_WINDOW = 64
"""Results handed to paho and not yet acknowledged; the rest wait in the spool, not in memory."""
RECONNECT_DELAY_S = (1, 10)
"""paho's reconnect backoff: first and longest wait (it doubles in between)."""


@dataclass(frozen=True)
class PublisherHealth:
    """A snapshot for /healthz, metrics and the heartbeat."""

    connected: bool
    pending: int
    """Results in the spool (not yet acknowledged by the broker)."""
    in_flight: int
    last_sequence: int
    acked: int
    """Results acknowledged by the broker since start."""
    dropped_pass: int
    """PASS results the spool bound has dropped (lifetime of the spool)."""
    disconnects: int
    commands: int
    last_error: str | None


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _configure_tls(client: paho.Client, tls: TlsSettings | None, address: BrokerAddress, url: str) -> None:
    tls = checked_tls(tls, address, url)
    if tls is None:
        return
    try:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"mqtt.tls: cannot load the TLS files ({tls.ca_file}, {tls.cert_file}): {exc}") from exc
    if tls.insecure:
        client.tls_insecure_set(True)


class ResultPublisher:
    """Publishes inspection results over MQTT through a durable spool, and answers commands.

    A result sink (``results.Sink``): the loop calls ``handle`` for every result and ``close`` at its end.

    Args:
        settings: The ``mqtt`` section of the configuration.
        station: Station name (part of every topic).
        on_command: Called (on paho's network thread; keep it quick) with each valid command; returns a dict for
            the response. Raising an EdgeInspectorError or ValueError answers with its message. The attribute of
            the same name may be set after construction, before ``start()``.
        model_id: Reported on the status topic.
        heartbeat_extra: Returns extra counters (frames, drops, ...) for each heartbeat; settable like
            ``on_command``.

    Raises:
        ConfigError: Bad URL, missing TLS files, or a password without a user name.
        SpoolError: The spool folder cannot be opened.
    """

    def __init__(
        self,
        settings: MqttSettings,
        station: str,
        on_command: Callable[[Command], dict] | None = None,
        *,
        model_id: str = "",
        heartbeat_extra: Callable[[], dict[str, Any]] | None = None,
    ):
        self.settings = settings
        self.station = station
        self.topics = Topics.for_station(settings.topic_prefix, station)
        self.on_command = on_command
        self.heartbeat_extra = heartbeat_extra
        self._status: dict[str, Any] = {"station": station, "model_id": model_id, "version": __version__}
        self.address = parse_broker_url(settings.url)
        self._spool = Spool(spool_path(settings.spool_dir, station), int(settings.spool_max_mb * 1024 * 1024),
                            sync=settings.spool_sync)

        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._in_flight: dict[int, int] = {}  # paho mid -> sequence; touched by the publisher thread only
        self._last_sent = 0
        self._acked = self._disconnects = self._commands = 0
        self._last_error: str | None = None
        self._unreachable_logged = False
        self._started_at = time.monotonic()
        self._thread: threading.Thread | None = None

        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"edge-inspector-{station}",
            clean_session=True,  # our spool, not the broker session, carries results across outages
        )
        _configure_tls(self._client, settings.tls, self.address, settings.url)
        username, password = credentials(settings)
        if username:
            self._client.username_pw_set(username, password)
        self._client.will_set(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._paho_log = logging.getLogger(f"{__name__}.paho")
        self._client.enable_logger(self._paho_log)
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_publish = self._handle_publish
        self._client.on_message = self._handle_message

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Connect in the background and start sending. An unreachable broker is logged, not raised."""
        if not self.settings.enabled:
            log.info("MQTT disabled: results get sequence numbers but are not published")
            return
        self._started_at = time.monotonic()
        self._client.connect_async(self.address.host, self.address.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        log.info("MQTT publisher started", extra=kv(url=self.settings.url, station=self.station,
                                                   spooled=len(self._spool)))

    def publish(self, result: InspectionResult) -> int:
        """Assign ``result.sequence``, write the result to the spool and return the sequence number.

        Never waits for the broker. Raises SpoolError if the spool cannot be written.
        """
        if not self.settings.enabled:
            result.sequence = self._spool.reserve()
            return result.sequence

        def payload(sequence: int) -> bytes:
            result.sequence = sequence
            return build_message(result, self.station, self.settings.include_mask).to_json()

        sequence = self._spool.append(Verdict(result.verdict).value, payload)
        self._wake.set()
        return sequence

    def handle(self, result: InspectionResult) -> None:
        """Sink interface: ``publish``."""
        self.publish(result)

    def close(self) -> None:
        """Sink interface: ``stop`` (send what is spooled while connected, then disconnect)."""
        self.stop()

    def set_status(self, **fields: Any) -> None:
        """Add or change fields of the retained status (e.g. ``paused=True``) and republish it."""
        self._status.update(fields)
        # The broker keeps the will given at CONNECT; the new one applies from the next connection.
        self._client.will_set(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
        if self._connected.is_set():
            self._client.publish(self.topics.status, self._status_payload("online"), qos=1, retain=True)

    def flush(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged). Returns False on timeout."""
        deadline = time.monotonic() + timeout
        while len(self._spool) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not len(self._spool)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Send what is spooled (for up to ``drain_timeout`` while connected), say offline, and disconnect.

        What is still unacknowledged stays in the spool for the next start.
        """
        if self._thread is not None:
            if self._connected.is_set():
                self.flush(drain_timeout)
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            if self._connected.is_set():
                info = self._client.publish(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
                info.wait_for_publish(timeout=2.0)
            # paho 2.2 logs "Client is not connected" as an error when its network loop wakes after this
            # disconnect(); that is the expected end of the session, not a fault.
            quiet = _DropMessage("Client is not connected")
            self._paho_log.addFilter(quiet)
            try:
                self._client.disconnect()
                self._client.loop_stop()
            finally:
                self._paho_log.removeFilter(quiet)
            self._thread = None
        pending = len(self._spool)
        self._spool.close()
        log.info("MQTT publisher stopped", extra=kv(pending=pending))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Results waiting in the spool."""
        return len(self._spool)

    @property
    def health(self) -> PublisherHealth:
        return PublisherHealth(
            connected=self.connected, pending=len(self._spool), in_flight=len(self._in_flight),
            last_sequence=self._spool.last_sequence, acked=self._acked, dropped_pass=self._spool.dropped_pass,
            disconnects=self._disconnects, commands=self._commands, last_error=self._last_error,
        )

    # ------------------------------------------------------------------ publisher thread
    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._drain_acks()
                if self._connected.is_set():
                    self._send_spooled()
                    if time.monotonic() >= next_heartbeat:
                        self._send_heartbeat()
                        next_heartbeat = time.monotonic() + self.settings.heartbeat_s
            except Exception as exc:  # e.g. a disk I/O error: this thread must outlive it, the line runs 24/7
                self._last_error = f"publisher: {exc}"
                log.exception("MQTT publisher thread error; retrying in 1 s")
                self._stopping.wait(1.0)
            # Disconnected, no heartbeat is due: sleep until woken (new result, ack, connection) or 0.5 s pass.
            due = next_heartbeat - time.monotonic() if self._connected.is_set() else 0.5
            self._wake.wait(min(0.5, max(0.0, due)))
            self._wake.clear()
        self._drain_acks()

    def _drain_acks(self) -> None:
        acked = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            sequence = self._in_flight.pop(mid, None)
            if sequence is not None:  # else: a status, heartbeat or response message
                acked.append(sequence)
        if acked:
            self._spool.remove(acked)
            self._acked += len(acked)

    def _send_spooled(self) -> None:
        room = IN_FLIGHT_WINDOW - len(self._in_flight)
        if room <= 0:
            return
        for entry in self._spool.peek(after=self._last_sent, limit=room):
            info = self._client.publish(self.topics.result, entry.payload, qos=self.settings.qos)
            # NO_CONN: paho keeps the message and sends it when the connection is back, like any in-flight one.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._last_error = f"publish failed: {paho.error_string(info.rc)}"
                log.warning("result publish refused; will retry", extra=kv(sequence=entry.sequence, rc=info.rc))
                return
            self._in_flight[info.mid] = entry.sequence
            self._last_sent = entry.sequence

    def _send_heartbeat(self) -> None:
        health = self.health
        doc = {
            "station": self.station, "ts": iso_utc(time.time()),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "last_sequence": health.last_sequence, "acked": health.acked, "pending": health.pending,
            "dropped_pass": health.dropped_pass, "disconnects": health.disconnects, "commands": health.commands,
        }
        if self.heartbeat_extra is not None:
            try:
                doc.update(self.heartbeat_extra())
            except Exception as exc:  # a metrics hook must not stop publishing
                log.warning("heartbeat_extra failed", extra=kv(error=repr(exc)))
        self._client.publish(self.topics.heartbeat, json.dumps(doc, default=str), qos=0)

    def _status_payload(self, state: str) -> str:
        return json.dumps({"state": state, **self._status, "ts": iso_utc(time.time())}, default=str)

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._last_error = f"broker refused the connection: {reason_code}"
            log.error("MQTT broker refused the connection", extra=kv(url=self.settings.url, reason=str(reason_code)))
            return
        self._unreachable_logged = False
        client.subscribe(self.topics.cmd, qos=1)
        client.publish(self.topics.status, self._status_payload("online"), qos=1, retain=True)
        self._connected.set()
        self._wake.set()
        log.info("MQTT connected", extra=kv(url=self.settings.url, pending=len(self._spool)))

    def _handle_connect_fail(self, client, userdata) -> None:
        self._last_error = f"broker unreachable at {self.settings.url}"
        # Say it once per outage, loudly; paho keeps retrying with backoff.
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("MQTT broker unreachable; results are spooled on disk and sent when it is back",
                        extra=kv(url=self.settings.url, pending=len(self._spool)))

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        # After a refused CONNACK paho disconnects too; keep the refusal as the error, it says more.
        if self._stopping.is_set() or not was_connected:
            return
        self._disconnects += 1
        self._last_error = f"connection lost: {reason_code}"
        log.warning("MQTT connection lost; spooling and reconnecting",
                    extra=kv(reason=str(reason_code), pending=len(self._spool)))

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _handle_message(self, client, userdata, message) -> None:
        if message.topic != self.topics.cmd:
            return
        self._commands += 1
        self._client.publish(self.topics.cmd_response, answer(message.payload, self.on_command), qos=1)
