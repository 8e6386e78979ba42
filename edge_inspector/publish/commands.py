"""Commands received on ``<prefix>/<station>/cmd``: parsing, validation, and the response document.

A command is one JSON object, e.g. ``{"kind": "set_threshold", "value": 0.42, "id": "plc-17"}``. ``id`` is
optional and echoed in the response so a controller can match answers to requests. Anything that is not a valid
command raises ``CommandError``; its message is sent back on ``<prefix>/<station>/cmd/response``.

| kind            | fields                       | meaning                                               |
|-----------------|------------------------------|-------------------------------------------------------|
| set_threshold   | value: number > 0            | raw image-score threshold used from the next frame    |
| set_sensitivity | value: number in [0, 1]      | 0.5 keeps the threshold; higher rejects more          |
| pause           | -                            | stop judging frames                                   |
| resume          | -                            | judge frames again                                    |
| trigger         | part_id: non-empty string    | software trigger: judge the next frame as this part   |
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from edge_inspector.errors import EdgeInspectorError

MAX_PART_ID_LENGTH = 128
MAX_ID_LENGTH = 128

# kind -> the fields it takes besides "kind" and "id"
KINDS: dict[str, tuple[str, ...]] = {
    "set_threshold": ("value",),
    "set_sensitivity": ("value",),
    "pause": (),
    "resume": (),
    "trigger": ("part_id",),
}


class CommandError(EdgeInspectorError):
    """A command payload is malformed or asks for something not allowed; the message says what and why."""

    def __init__(self, message: str, request_id: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.kind = kind
        """The command kind when it was recognised, for the response."""


@dataclass(frozen=True)
class Command:
    """One validated command.

    Attributes:
        kind: One of ``KINDS``.
        value: The number for set_threshold / set_sensitivity, else None.
        part_id: The part id for trigger, else None.
        request_id: The optional ``id`` of the request, echoed in the response.
    """

    kind: str
    value: float | None = None
    part_id: str | None = None
    request_id: str | None = None


def _number(doc: dict[str, Any], kind: str, request_id: str | None) -> float:
    value = doc.get("value")
    # bool is an int subclass in Python, but "value": true is surely a mistake.
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer literal too large for a float
        number = math.nan
    if not math.isfinite(number):
        raise CommandError(f"{kind}: 'value' must be a finite number, got {value!r}", request_id, kind)
    return number


def parse_command(payload: bytes) -> Command:
    """Validate one command payload.

    Args:
        payload: The raw MQTT payload (UTF-8 JSON object).

    Returns:
        The validated command.

    Raises:
        CommandError: The payload is not JSON, not an object, has an unknown kind or key, or a value out of range.

    >>> parse_command(b'{"kind": "set_sensitivity", "value": 0.7}')
    Command(kind='set_sensitivity', value=0.7, part_id=None, request_id=None)
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"a command must be a JSON object, got {type(doc).__name__}")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH):
        raise CommandError(f"'id' must be a string of at most {MAX_ID_LENGTH} characters, got {request_id!r}")
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise CommandError(f"missing 'kind' (one of: {', '.join(KINDS)})", request_id)
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CommandError(f"unknown kind '{kind}'.{hint} Allowed: {', '.join(KINDS)}", request_id)
    allowed = {"kind", "id", *KINDS[kind]}
    extra = sorted(set(doc) - allowed)
    if extra:
        raise CommandError(
            f"{kind}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}", request_id, kind
        )

    if kind == "set_threshold":
        value = _number(doc, kind, request_id)
        if value <= 0:
            raise CommandError(f"set_threshold: 'value' must be > 0, got {value}", request_id, kind)
        return Command(kind, value=value, request_id=request_id)
    if kind == "set_sensitivity":
        value = _number(doc, kind, request_id)
        if not 0.0 <= value <= 1.0:
            raise CommandError(f"set_sensitivity: 'value' must be within [0, 1], got {value}", request_id, kind)
        return Command(kind, value=value, request_id=request_id)
    if kind == "trigger":
        part_id = doc.get("part_id")
        if not isinstance(part_id, str) or not part_id.strip() or len(part_id) > MAX_PART_ID_LENGTH:
            raise CommandError(
                f"trigger: 'part_id' must be a non-empty string of at most {MAX_PART_ID_LENGTH} characters, "
                f"got {part_id!r}", request_id, kind)
        return Command(kind, part_id=part_id, request_id=request_id)
    return Command(kind, request_id=request_id)


def response(request_id: str | None, kind: str | None, ok: bool, detail: dict | str) -> bytes:
    """The JSON answer published on the response topic.

    Args:
        request_id: The request's ``id`` (or None).
        kind: The command kind when it was recognised, else None.
        ok: Whether the command was applied.
        detail: The handler's result (ok) or the error message (not ok).
    """
    doc: dict[str, Any] = {"id": request_id, "kind": kind, "ok": ok}
    doc["result" if ok else "error"] = detail
    return json.dumps(doc, default=str).encode()
