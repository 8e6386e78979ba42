"""Where and how to reach the broker: URL parsing, topic names, TLS file checks and credentials (no paho here)."""

from __future__ import annotations

import os
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
