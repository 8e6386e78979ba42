"""Optional authentication of MQTT commands: an HMAC-SHA256 signature with a key shared by the operator and the line.

Anyone who can publish on a station's ``cmd`` topic can otherwise pause it or move its threshold. Two layers close
that: the broker's ACL (only the operator account may publish ``<prefix>/+/cmd``; ``deploy/MQTT.md``) and, when the
environment variable named by ``mqtt.command_key_env`` holds a key, a signature on every command, so a leaked or
shared broker account still cannot steer the line.

A signed command carries two more fields::

    {"kind": "set_sensitivity", "value": 0.6, "id": "op-7", "ts": 1795631522.6, "hmac": "<64 hex digits>"}

``hmac`` is HMAC-SHA256, keyed with the UTF-8 key, over the canonical JSON of every other field (``sign`` below:
keys sorted, no spaces, UTF-8). ``ts`` (Unix seconds) must lie within ``MAX_AGE_S`` of the station's clock, and a
signature is accepted once: a recorded command cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import threading
import time
from typing import Any

from edge_inspector.errors import EdgeInspectorError

SIGNATURE_FIELDS = ("ts", "hmac")
MAX_AGE_S = 60.0
"""How far a command's ``ts`` may be from the station's clock (either way), and how long a signature is remembered."""


class CommandAuthError(EdgeInspectorError):
    """A command is unsigned, badly signed, too old or replayed while the station requires signatures."""


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every field but ``hmac``, as JSON with sorted keys and no spaces."""
    fields = {key: value for key, value in doc.items() if key != "hmac"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(doc: dict[str, Any], key: str, ts: float | None = None) -> dict[str, Any]:
    """``doc`` with ``ts`` (now, unless given) and its ``hmac`` added: what an operator tool publishes.

    >>> sorted(sign({"kind": "pause"}, "secret", ts=1.0))
    ['hmac', 'kind', 'ts']
    """
    signed = {**doc, "ts": time.time() if ts is None else ts}
    signed["hmac"] = hmac.new(key.encode(), canonical(signed), hashlib.sha256).hexdigest()
    return signed


class CommandAuth:
    """Checks command signatures when a key is set; accepts every command when not.

    Args:
        key: The shared secret, or None (commands are not authenticated).
        max_age_s: See ``MAX_AGE_S``.
    """

    def __init__(self, key: str | None, max_age_s: float = MAX_AGE_S):
        self._key = key.encode() if key else None
        self.max_age_s = max_age_s
        self._seen: dict[str, float] = {}  # signature -> its ts, for the replay check; pruned to the age window
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, variable: str) -> CommandAuth:
        """The key from environment variable ``variable`` (unset or empty: no authentication)."""
        return cls(os.environ.get(variable) or None)

    @property
    def required(self) -> bool:
        return self._key is not None

    def check(self, doc: dict[str, Any], now: float | None = None) -> None:
        """Raise ``CommandAuthError`` unless ``doc`` is signed with the key, fresh and not seen before.

        Without a key, returns at once (a signature that is present is not checked).
        """
        if self._key is None:
            return
        given, ts = doc.get("hmac"), doc.get("ts")
        if not isinstance(given, str) or not isinstance(ts, (int, float)) or isinstance(ts, bool):
            raise CommandAuthError("unauthorised: this station requires signed commands ('ts' and 'hmac' fields; "
                                   "see deploy/MQTT.md)")
        expected = hmac.new(self._key, canonical(doc), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            raise CommandAuthError("unauthorised: bad command signature")
        now = time.time() if now is None else now
        if not math.isfinite(ts) or abs(now - ts) > self.max_age_s:
            raise CommandAuthError(f"unauthorised: command timestamp is more than {self.max_age_s:g} s from the "
                                   "station's clock (stale, replayed, or the clocks disagree)")
        with self._lock:
            self._seen = {mac: seen_ts for mac, seen_ts in self._seen.items() if abs(now - seen_ts) <= self.max_age_s}
            if expected in self._seen:
                raise CommandAuthError("unauthorised: this signed command was already applied (replay)")
            self._seen[expected] = ts
