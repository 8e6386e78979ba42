"""MQTT publishing with paho-mqtt 2.x (callback API v2): results, status, heartbeat and commands.

Delivery: ``publish(result)`` numbers the result, keeps it in the outbox (the disk spool, or memory while the spool
cannot be written; ``outbox.py``) and returns at once. A publisher thread sends what the outbox holds oldest-first at
the configured QoS (1 by default) and lets each go only after its PUBACK. paho re-sends unacknowledged messages
itself after a reconnect; anything still spooled when the process ends is sent on the next start. That is
at-least-once delivery in sequence order: a result whose PUBACK was lost to a crash or an outage can arrive twice,
with the same ``sequence``, so consumers deduplicate on (station, sequence).

Delivery never stops silently. Every paho callback is contained (an exception is logged and counted, never allowed
to end paho's network thread), and the publisher thread watches the client: a network thread that died, or results
pending with no PUBACK for ``stall_after_s`` while connected, restarts the client. With MQTT 5 (the default) a
broker that refuses a publish says why (its ACL, typically): the result stays pending and is retried, and the
refusal is reported. What is wrong now is in ``health`` and on the retained status topic (``problems``).

Topics, under ``<topic_prefix>/<station>/``:
    result          one JSON ``ResultMessage`` per judged part (QoS 1)
    status          retained ``{"state": "online"|"offline", "problems": [...], ...}``; the broker publishes
                    "offline" (last will) when the connection drops without a clean stop
    heartbeat       counters every ``heartbeat_s`` (QoS 0)
    cmd             commands in (see ``commands.py``; optionally signed, ``command_auth.py``)
    cmd/response    one answer per command: ``{"id", "kind", "ok", "result" | "error"}`` (QoS 1)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from edge_inspector import __version__
from edge_inspector.config import MqttSettings
from edge_inspector.log import kv
from edge_inspector.publish.broker import Topics, checked_tls, credentials, diagnose, parse_broker_url, tls_context
from edge_inspector.publish.command_auth import CommandAuth
from edge_inspector.publish.commands import Command, answer
from edge_inspector.publish.mqtt_session import Session, SessionEvents
from edge_inspector.publish.outbox import Outbox
from edge_inspector.publish.schema import build_message, iso_utc
from edge_inspector.publish.spool import spool_path
from edge_inspector.results import InspectionResult, Verdict

log = logging.getLogger(__name__)

IN_FLIGHT_WINDOW = 64
"""Results handed to paho and not yet acknowledged; the rest wait in the outbox."""
REFUSED_RETRY_S = 10.0
"""Wait before sending again results the broker refused (an ACL being fixed); they stay pending meanwhile."""


@dataclass(frozen=True)
class PublisherHealth:
    """A snapshot for /readyz, metrics, the heartbeat and the status topic."""

    connected: bool
    """Connected, and paho's network thread is running."""
    pending: int
    """Results not yet acknowledged by the broker (spool and memory)."""
    in_flight: int
    last_sequence: int
    acked: int
    """Results acknowledged by the broker since start."""
    dropped_pass: int
    """PASS results the spool bound has dropped (lifetime of the spool)."""
    disconnects: int
    commands: int
    last_error: str | None
    restarts: int = 0
    """Times the watchdog restarted the MQTT client (dead network thread, or stalled delivery)."""
    callback_errors: int = 0
    """Exceptions contained in paho callbacks."""
    unspooled: int = 0
    """Results that could not be written to the spool (sent from memory), since start."""
    held: int = 0
    """Results held in memory now because the spool cannot be written."""
    lost_pass: int = 0
    lost_fail: int = 0
    """Results given up with no copy anywhere (memory bound while the spool fails), since start."""
    quarantined: int = 0
    """Damaged spool files moved aside (their readable results replayed), since start."""
    storage_error: str | None = None
    refused: str | None = None
    """Why the broker refuses result messages now (MQTT 5 reason code, e.g. its ACL); None when it takes them."""

    @property
    def problems(self) -> list[str]:
        """What keeps results from reaching the broker now (empty when nothing does)."""
        found = [self.storage_error, self.refused]
        if not self.connected:
            found.append(f"not connected to the MQTT broker ({self.pending} result(s) waiting): {self.last_error}")
        return [problem for problem in found if problem]


class ResultPublisher:
    """Publishes inspection results over MQTT through a durable outbox, and answers commands.

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
        SpoolError: The spool folder cannot be opened (read-only, not a folder, in use by another process).
    """

    def __init__(self, settings: MqttSettings, station: str, on_command: Callable[[Command], dict] | None = None, *,
                 model_id: str = "", heartbeat_extra: Callable[[], dict[str, Any]] | None = None):
        self.settings = settings
        self.station = station
        self.topics = Topics.for_station(settings.topic_prefix, station)
        self.on_command = on_command
        self.heartbeat_extra = heartbeat_extra
        self._status: dict[str, Any] = {"station": station, "model_id": model_id, "version": __version__,
                                        "problems": []}
        self.address = parse_broker_url(settings.url)
        tls = checked_tls(settings.tls, self.address, settings.url)
        self._tls_context = tls_context(tls) if tls is not None else None
        username, password = credentials(settings)
        self._auth = CommandAuth.from_environment(settings.command_key_env)
        self._outbox = Outbox(spool_path(settings.spool_dir, station), int(settings.spool_max_mb * 1024 * 1024),
                              settings.spool_sync)
        self.stall_after_s = max(30.0, 2.0 * settings.keepalive_s)
        """Results pending, connected, and no PUBACK for this long: the client is restarted."""

        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._in_flight: dict[int, int] = {}  # paho mid -> sequence; touched by the publisher thread only
        self._last_sent = self._outbox_resets = 0
        self._acked = self._commands = self._restarts = 0
        self._refused: str | None = None
        self._retry_refused_at = 0.0
        self._last_progress = time.monotonic()
        self._published_problems: list[str] = []
        self._started_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._session = Session(settings, station, self.address, self._tls_context, (username, password),
                                will=lambda: self._status_payload("offline"),
                                events=SessionEvents(self._handle_connected, self._wake.set, self._handle_message))

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Connect in the background and start sending. An unreachable broker is logged, not raised."""
        if not self.settings.enabled:
            log.info("MQTT disabled: results get sequence numbers but are not published")
            return
        if not self._auth.required:
            log.warning("MQTT commands are not authenticated: set $%s to a shared key (see deploy/MQTT.md), and let "
                        "the broker's ACL allow only the operator account to publish on cmd",
                        self.settings.command_key_env)
        self._started_at = self._last_progress = time.monotonic()
        self._session.start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        log.info("MQTT publisher started", extra=kv(url=self.settings.url, station=self.station,
                                                   pending=len(self._outbox)))

    def publish(self, result: InspectionResult) -> int:
        """Assign ``result.sequence``, keep the result in the outbox and return the sequence number.

        Never waits for the broker, and never fails for storage: a result the spool cannot take is held in
        memory and sent from there (see ``outbox.py``).
        """
        if not self.settings.enabled:
            result.sequence = self._outbox.number()
            return result.sequence

        def payload(sequence: int, unspooled: bool) -> bytes:
            result.sequence = sequence
            return build_message(result, self.station, self.settings.include_mask, unspooled=unspooled).to_json()

        sequence = self._outbox.add(Verdict(result.verdict).value, payload)
        self._wake.set()
        return sequence

    def handle(self, result: InspectionResult) -> None:
        """Sink interface: ``publish``."""
        self.publish(result)

    def close(self) -> None:
        """Sink interface: ``stop`` (send what is pending while connected, then disconnect)."""
        self.stop()

    def set_status(self, **fields: Any) -> None:
        """Add or change fields of the retained status (e.g. ``paused=True``) and republish it."""
        self._status.update(fields)
        self._session.announce(self._status_payload("online"))

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending (everything acknowledged). Returns False on timeout."""
        deadline = time.monotonic() + timeout
        while len(self._outbox) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not len(self._outbox)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Send what is pending (for up to ``drain_timeout`` while connected), say offline, and disconnect.

        What is still unacknowledged stays in the spool for the next start.
        """
        if self._thread is not None:
            if self._session.connected:
                self.flush(drain_timeout)
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._session.stop(self._status_payload("offline"))
            self._thread = None
        pending = len(self._outbox)
        self._outbox.close()
        log.info("MQTT publisher stopped", extra=kv(pending=pending))

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def pending(self) -> int:
        """Results not yet acknowledged (spool and memory)."""
        return len(self._outbox)

    @property
    def health(self) -> PublisherHealth:
        box = self._outbox.health
        session = self._session
        return PublisherHealth(
            connected=session.connected, pending=box.pending, in_flight=len(self._in_flight),
            last_sequence=box.last_sequence, acked=self._acked, dropped_pass=box.dropped_pass,
            disconnects=session.disconnects, commands=self._commands, last_error=session.last_error,
            restarts=self._restarts, callback_errors=session.callback_errors, unspooled=box.unspooled,
            held=box.held, lost_pass=box.lost_pass, lost_fail=box.lost_fail, quarantined=box.quarantined,
            storage_error=box.storage_error, refused=self._refused,
        )

    # ------------------------------------------------------------------ publisher thread
    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._drain_acks()
                self._watch()
                if self._session.connected:
                    self._send_pending()
                    self._publish_problems()
                    if time.monotonic() >= next_heartbeat:
                        self._send_heartbeat()
                        next_heartbeat = time.monotonic() + self.settings.heartbeat_s
            except Exception as exc:  # e.g. a disk I/O error: this thread must outlive it, the line runs 24/7
                self._session.last_error = f"publisher: {exc}"
                log.exception("MQTT publisher thread error; retrying in 1 s")
                self._stopping.wait(1.0)
            # Disconnected, no heartbeat is due: sleep until woken (new result, ack, connection) or 0.5 s pass.
            due = next_heartbeat - time.monotonic() if self._session.connected else 0.5
            self._wake.wait(min(0.5, max(0.0, due)))
            self._wake.clear()
        self._drain_acks()

    def _watch(self) -> None:
        """Restart a client whose network thread died or whose delivery stalled; say why a broker is unreachable."""
        session = self._session
        if session.diagnosis_due:
            session.report_unreachable(diagnose(self.address, self._tls_context), len(self._outbox))
        why = None
        if not session.network_alive:
            why = "paho's network thread has stopped"
        elif session.connected and self._in_flight and time.monotonic() - self._last_progress > self.stall_after_s:
            why = f"no acknowledgement for {self.stall_after_s:g} s with {len(self._in_flight)} result(s) in flight"
        if why is None:
            return
        self._restarts += 1
        log.error("MQTT delivery stopped; restarting the client", extra=kv(reason=why, pending=len(self._outbox),
                                                                        restarts=self._restarts))
        session.restart(why)
        self._resend_all()

    def _resend_all(self) -> None:
        """Forget what was in flight and send every pending result again, oldest first (consumers deduplicate)."""
        self._in_flight.clear()
        self._last_sent = 0
        self._last_progress = time.monotonic()

    def _drain_acks(self) -> None:
        acked, refusal = [], None
        for mid, reason in self._session.take_acks():
            sequence = self._in_flight.pop(mid, None)
            if sequence is None:  # a status, heartbeat or response message
                continue
            if reason is None:
                acked.append(sequence)
            else:
                refusal = f"the broker refuses results on {self.topics.result}: {reason} (its ACL must let this " \
                          "station's account publish there)"
        if acked:
            self._outbox.remove(acked)
            self._acked += len(acked)
            self._last_progress = time.monotonic()
            if self._refused:
                log.warning("the broker takes results again")
            self._refused = None
        if refusal:
            if self._refused is None:
                log.error("MQTT broker refuses results; they stay pending and are retried",
                          extra=kv(reason=refusal, retry_s=REFUSED_RETRY_S))
            self._refused = refusal
            self._retry_refused_at = time.monotonic() + REFUSED_RETRY_S

    def _send_pending(self) -> None:
        if self._outbox.resets != self._outbox_resets:  # a damaged spool was replaced: start over
            self._outbox_resets = self._outbox.resets
            self._resend_all()
        if self._refused:
            if time.monotonic() < self._retry_refused_at or self._in_flight:
                return
            self._resend_all()
        room = IN_FLIGHT_WINDOW - len(self._in_flight)
        if room <= 0:
            return
        if not self._in_flight:
            self._last_progress = time.monotonic()  # the stall clock runs only while something is in flight
        for entry in self._outbox.peek(after=self._last_sent, limit=room):
            mid = self._session.send(self.topics.result, entry.payload, self.settings.qos)
            if mid is None:
                return
            self._in_flight[mid] = entry.sequence
            self._last_sent = entry.sequence

    def _send_heartbeat(self) -> None:
        health = self.health
        doc = {
            "station": self.station, "ts": iso_utc(time.time()),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "last_sequence": health.last_sequence, "acked": health.acked, "pending": health.pending,
            "dropped_pass": health.dropped_pass, "disconnects": health.disconnects, "commands": health.commands,
            "restarts": health.restarts, "unspooled": health.unspooled, "held": health.held,
            "lost_pass": health.lost_pass, "lost_fail": health.lost_fail, "problems": health.problems,
        }
        if self.heartbeat_extra is not None:
            try:
                doc.update(self.heartbeat_extra())
            except Exception as exc:  # a metrics hook must not stop publishing
                log.warning("heartbeat_extra failed", extra=kv(error=repr(exc)))
        self._session.send(self.topics.heartbeat, json.dumps(doc, default=str).encode(), qos=0)

    def _publish_problems(self) -> None:
        """Republish the retained status when what keeps results from the broker changes."""
        problems = [p for p in self.health.problems if not p.startswith("not connected")]
        if problems != self._published_problems:
            self._published_problems = problems
            self._status["problems"] = problems
            self._session.announce(self._status_payload("online"))

    def _status_payload(self, state: str) -> str:
        return json.dumps({"state": state, **self._status, "ts": iso_utc(time.time())}, default=str)

    # ------------------------------------------------------------------ session events (paho's network thread)
    def _handle_connected(self) -> str:
        """The session connected: what to announce on the status topic."""
        self._wake.set()
        return self._status_payload("online")

    def _handle_message(self, topic: str, payload: bytes) -> bytes | None:
        """A message on a subscribed topic: the answer to publish on cmd/response, or None."""
        if topic != self.topics.cmd:
            return None
        self._commands += 1
        return answer(payload, self.on_command, self._auth)
