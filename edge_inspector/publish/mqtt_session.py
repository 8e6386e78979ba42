"""The paho client of one station, kept alive: contained callbacks, connection state in words, and restarts.

``ResultPublisher`` (``mqtt.py``) decides what to send; this module owns the paho client it sends through. Every
callback runs inside a guard, so a bug or a hostile message can never end paho's network thread (paho would
otherwise re-raise and the thread would die with the connection still marked up). ``restart`` replaces the client
when the publisher's watchdog finds the thread dead or delivery stalled; callbacks of a replaced client are ignored.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_inspector.config import MqttSettings
from edge_inspector.log import kv
from edge_inspector.publish.broker import BrokerAddress, Topics

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = (1, 10)
"""paho's reconnect backoff: first and longest wait (it doubles in between)."""
RETIRE_WAIT_S = 5.0
"""How long a restart waits for the old client's network thread to end (one stuck in a callback is left behind)."""


@dataclass(frozen=True)
class SessionEvents:
    """What the session tells its owner, each called on paho's network thread.

    Attributes:
        connected: The connection is up; returns the status payload to announce.
        acknowledged: A PUBACK (or a refusal) arrived; ``take_acks`` has it.
        message: A message on a subscribed topic; returns the payload to publish on cmd/response, or None.
    """

    connected: Callable[[], str]
    acknowledged: Callable[[], None]
    message: Callable[[str, bytes], bytes | None]


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _refusal_hint(reason: str) -> str:
    lowered = reason.lower()
    if "authori" in lowered or "password" in lowered or "banned" in lowered:
        return " (check the account in the user/password environment variables, the broker's password file and " \
               "its ACL: the station's account must be allowed to connect and to write its status topic)"
    return ""


class Session:
    """One station's MQTT connection.

    Args:
        settings: The ``mqtt`` settings (URL, protocol, keep-alive, client id, topic prefix).
        station: The station name.
        address: The parsed broker URL.
        tls: The TLS context, or None for plain TCP.
        account: (user name, password) or (None, None).
        will: Builds the 'offline' status registered as the last will at each CONNECT.
        events: See ``SessionEvents``.
    """

    def __init__(self, settings: MqttSettings, station: str, address: BrokerAddress, tls: ssl.SSLContext | None,
                 account: tuple[str | None, str | None], will: Callable[[], str], events: SessionEvents):
        self.settings, self.address, self._tls, self._account = settings, address, tls, account
        self.topics = Topics.for_station(settings.topic_prefix, station)
        self.client_id = settings.client_id or f"edge-inspector-{station}"
        self._will, self._events = will, events
        self._connected = threading.Event()
        self._stopping = False
        self._started = False
        self._acks: queue.SimpleQueue[tuple[int, int, str | None]] = queue.SimpleQueue()
        self.disconnects = self.callback_errors = 0
        self.last_error: str | None = None
        self.diagnosis_due = False
        """A connection attempt failed and nobody has said why yet (the publisher thread runs ``broker.diagnose``)."""
        self._unreachable_logged = False
        self._generation = 0
        self._paho_log = logging.getLogger(f"{__name__}.paho")
        self._client = self._new_client()

    # ------------------------------------------------------------------ state
    @property
    def network_alive(self) -> bool:
        """paho's network thread runs (before ``start`` too). paho keeps the thread in ``Client._thread`` and sets
        it to None when the thread ends, however it ends; it offers no public way to ask."""
        return not self._started or getattr(self._client, "_thread", None) is not None

    @property
    def connected(self) -> bool:
        """Connected, and the network thread that keeps the connection is alive."""
        return self._connected.is_set() and self.network_alive

    def take_acks(self) -> list[tuple[int, str | None]]:
        """(mid, refusal reason or None) of the PUBACKs that arrived since the last call, from the current client."""
        acks = []
        while True:
            try:
                generation, mid, reason = self._acks.get_nowait()
            except queue.Empty:
                return acks
            if generation == self._generation:
                acks.append((mid, reason))

    # ------------------------------------------------------------------ actions
    def start(self) -> None:
        self._started = True
        self._connect(self._client)

    def send(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> int | None:
        """Hand one message to paho; its mid, or None when paho refused it (logged)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN: paho keeps the message and sends it when the connection is back, like any in-flight one.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.last_error = f"publish failed: {paho.error_string(info.rc)}"
            log.warning("MQTT publish refused by the client; will retry", extra=kv(topic=topic, rc=info.rc))
            return None
        return info.mid

    def announce(self, status: str) -> None:
        """Publish ``status`` retained now when connected; the last will follows from the next CONNECT."""
        self._client.will_set(self.topics.status, self._will(), qos=1, retain=True)
        if self.connected:
            self.send(self.topics.status, status, qos=1, retain=True)

    def report_unreachable(self, diagnosis: str, pending: int) -> None:
        """Say once per outage why the broker cannot be reached (``diagnosis`` from ``broker.diagnose``)."""
        self.diagnosis_due = False
        self.last_error = f"broker unreachable at {self.settings.url}: {diagnosis}"
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("MQTT broker unreachable; results are kept and sent when it is back",
                        extra=kv(url=self.settings.url, reason=diagnosis, pending=pending))

    def restart(self, why: str) -> None:
        """Replace the client: retire the old one (its socket closed, its late callbacks ignored), connect anew."""
        old = self._client
        self._generation += 1
        self._connected.clear()
        self.last_error = f"MQTT client restarted: {why}"
        retire = threading.Thread(target=self._retire, args=(old,), name="mqtt-retire", daemon=True)
        retire.start()
        retire.join(RETIRE_WAIT_S)
        self._client = self._new_client()
        self._connect(self._client)

    def stop(self, offline: str) -> None:
        """Say ``offline`` (retained) when connected, disconnect and end the network thread."""
        self._stopping = True
        if self.connected:
            try:
                self._client.publish(self.topics.status, offline, qos=1, retain=True).wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:  # the connection went meanwhile: the will says offline
                log.debug("offline status not sent", extra=kv(error=str(exc)))
        # paho 2.2 logs "Client is not connected" as an error when its network loop wakes after this
        # disconnect(); that is the expected end of the session, not a fault.
        quiet = _DropMessage("Client is not connected")
        self._paho_log.addFilter(quiet)
        try:
            self._client.disconnect()
            self._client.loop_stop()
        finally:
            self._paho_log.removeFilter(quiet)

    # ------------------------------------------------------------------ the client
    def _new_client(self) -> paho.Client:
        v5 = self.settings.protocol == "v5"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                             # our outbox, not the broker session, carries results across outages
                             **({} if v5 else {"clean_session": True}))
        if self._tls is not None:
            client.tls_set_context(self._tls)
        username, password = self._account
        if username:
            client.username_pw_set(username, password)
        client.will_set(self.topics.status, self._will(), qos=1, retain=True)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.enable_logger(self._paho_log)
        client.suppress_exceptions = True  # a second net under the guards below
        generation = self._generation
        for name, handler in (("on_connect", self._handle_connect), ("on_connect_fail", self._handle_connect_fail),
                              ("on_disconnect", self._handle_disconnect), ("on_publish", self._handle_publish),
                              ("on_subscribe", self._handle_subscribe), ("on_message", self._handle_message)):
            setattr(client, name, self._guarded(handler, generation))
        return client

    def _connect(self, client: paho.Client) -> None:
        v5 = {"clean_start": True} if self.settings.protocol == "v5" else {}
        client.connect_async(self.address.host, self.address.port, keepalive=self.settings.keepalive_s, **v5)
        client.loop_start()

    def _retire(self, client: paho.Client) -> None:
        try:
            client.disconnect()
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                sock.close()  # a dead network thread left it open: the broker now sees the old connection end
        except Exception:  # noqa: BLE001 - a broken client is being thrown away; nothing to save
            log.debug("retiring the old MQTT client failed", exc_info=True)

    def _guarded(self, handler: Callable, generation: int) -> Callable:
        def callback(client, userdata, *args) -> None:
            if generation != self._generation:
                return  # a replaced client's late callback
            try:
                handler(client, *args)
            except Exception as exc:  # contained: paho's network thread must outlive any callback
                self.callback_errors += 1
                self.last_error = f"MQTT {handler.__name__} failed: {type(exc).__name__}: {str(exc)[:200]}"
                log.exception("MQTT callback failed; contained", extra=kv(callback=handler.__name__))
        return callback

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _handle_connect(self, client, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}{_refusal_hint(str(reason_code))}"
            log.error("MQTT broker refused the connection", extra=kv(url=self.settings.url, reason=self.last_error))
            return
        self._unreachable_logged = False
        self.diagnosis_due = False
        client.subscribe(self.topics.cmd, qos=1)
        status = self._events.connected()
        client.publish(self.topics.status, status, qos=1, retain=True)
        self._connected.set()
        log.info("MQTT connected", extra=kv(url=self.settings.url, protocol=self.settings.protocol))

    def _handle_connect_fail(self, client) -> None:
        if not self._unreachable_logged:
            self.diagnosis_due = True
        if self.last_error is None or not self.last_error.startswith("broker unreachable"):
            self.last_error = f"broker unreachable at {self.settings.url}"

    def _handle_disconnect(self, client, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        # After a refused CONNACK paho disconnects too; keep the refusal as the error, it says more.
        if self._stopping or not was_connected:
            return
        self.disconnects += 1
        reason = str(reason_code)
        if reason == "Unspecified error" and self.settings.protocol != "v5":
            reason = "the broker or the network closed it (MQTT 3.1.1 carries no reason)"
        self.last_error = f"connection lost: {reason}{_refusal_hint(reason)}"
        log.warning("MQTT connection lost; keeping results and reconnecting", extra=kv(reason=self.last_error))

    def _handle_publish(self, client, mid, reason_code, properties) -> None:
        self._acks.put((self._generation, mid, str(reason_code) if reason_code.is_failure else None))
        self._events.acknowledged()

    def _handle_subscribe(self, client, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self.last_error = f"the broker refuses the subscription to {self.topics.cmd}: {refused[0]}; commands " \
                              "will not arrive (the broker's ACL must let this station read its cmd topic)"
            log.error("MQTT command subscription refused", extra=kv(reason=self.last_error))

    def _handle_message(self, client, message) -> None:
        reply = self._events.message(message.topic, message.payload)
        if reply is not None:
            client.publish(self.topics.cmd_response, reply, qos=1)
