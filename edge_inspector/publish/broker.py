"""Where and how to reach the broker: URL parsing, topic names, TLS set-up, credentials, and why a connection fails
(no paho here)."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge_inspector.config import MqttSettings, TlsSettings
from edge_inspector.errors import ConfigError


@dataclass(frozen=True)
class Topics:
    """The topic names of one station."""

    result: str
    status: str
    heartbeat: str
    cmd: str
    cmd_response: str

    @classmethod
    def for_station(cls, prefix: str, station: str) -> Topics:
        """Topics under ``<prefix>/<station>/``.

        Raises:
            ConfigError: The station or prefix holds an MQTT wildcard, or the station is empty or holds a '/'.
        """
        if not station or any(c in station for c in "+#/"):
            raise ConfigError(f"station '{station}' cannot be used in MQTT topics: it must be non-empty, "
                              "without '+', '#' or '/'")
        if any(c in prefix for c in "+#"):
            raise ConfigError(f"mqtt.topic_prefix '{prefix}' cannot hold the MQTT wildcards '+' or '#'")
        base = f"{prefix.rstrip('/')}/{station}"
        return cls(f"{base}/result", f"{base}/status", f"{base}/heartbeat", f"{base}/cmd", f"{base}/cmd/response")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (default 1883) or ``mqtts://host:port`` (TLS, default 8883)."""
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
        raise ConfigError(f"mqtt.url: '{url}' is not mqtt://host:port or mqtts://host:port")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"mqtt.url: '{url}' has an invalid port") from None
    return BrokerAddress(parts.hostname, port, tls)


def checked_tls(tls: TlsSettings | None, address: BrokerAddress, url: str) -> TlsSettings | None:
    """The TLS settings to use (None for plain TCP), checked before anything connects, so a typo is an error now
    and not a silent retry loop.

    Raises:
        ConfigError: A file that does not exist, a key without its certificate, or TLS files on an mqtt:// URL.
    """
    if not address.tls:
        if tls is not None and (tls.ca_file or tls.cert_file or tls.key_file):
            raise ConfigError(f"mqtt.tls is set but mqtt.url '{url}' is not TLS; use mqtts://")
        return None
    tls = tls or TlsSettings()
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"mqtt.tls.{key}: file not found: {path}")
    if tls.key_file and not tls.cert_file:
        raise ConfigError("mqtt.tls.key_file is set without mqtt.tls.cert_file (the client certificate)")
    return tls


def credentials(settings: MqttSettings) -> tuple[str | None, str | None]:
    """User name and password from the environment variables the settings name (secrets never live in YAML)."""
    username = os.environ.get(settings.username_env) or None
    password = os.environ.get(settings.password_env) or None
    if password and not username:
        raise ConfigError(f"${settings.password_env} is set but ${settings.username_env} (the MQTT user) is not")
    return username, password


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client's TLS context: the CA (or the system's), the client certificate, host-name checking.

    Built here rather than by paho, so that ``diagnose`` can run the same handshake and say what failed.

    Raises:
        ConfigError: A file cannot be loaded (not PEM, key does not match the certificate, ...).
    """
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"mqtt.tls: cannot load the TLS files ({tls.ca_file}, {tls.cert_file}): {exc}") from exc
    if tls.insecure:
        context.check_hostname = False
    return context


def diagnose(address: BrokerAddress, context: ssl.SSLContext | None, timeout_s: float = 5.0) -> str:
    """Why the broker at ``address`` cannot be reached, in words: a TCP or a TLS failure, and what to check.

    paho reports every failed attempt alike; this repeats the attempt up to the end of the TLS handshake (the
    MQTT CONNECT that follows is paho's, and its refusal comes with a reason code).
    """
    where = f"{address.host}:{address.port}"
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout_s)
    except OSError as exc:
        return f"cannot open a TCP connection to {where}: {exc.strerror or exc} (is the broker running, the host " \
               "and port right, a firewall in between?)"
    with sock:
        if context is None:
            return f"{where} accepts TCP connections but the MQTT connection failed (is it an MQTT port? a TLS " \
                   "port needs mqtts://)"
        try:
            with context.wrap_socket(sock, server_hostname=address.host):
                return f"{where}: TCP and the TLS handshake work; the MQTT connection failed after them"
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the certificate of {where} was not accepted: {exc.verify_message} (check mqtt.tls.ca_file " \
                   "and that the host name in mqtt.url is one the certificate names)"
        except ssl.SSLError as exc:
            return f"TLS handshake with {where} failed: {exc.reason or exc} (a client certificate the broker " \
                   "requires or rejects? mqtt.tls.cert_file, mqtt.tls.key_file; a TLS port at all?)"
        except OSError as exc:
            return f"TLS handshake with {where} failed: {exc.strerror or exc}"
