"""Commands received on ``<prefix>/<station>/cmd``: parsing, validation, and the response document.

A command is one JSON object, e.g. ``{"kind": "set_threshold", "value": 0.42, "id": "plc-17"}``. ``id`` is
optional and echoed in the response so a controller can match answers to requests. Anything that is not a valid
command raises ``CommandError``; its message is sent back on ``<prefix>/<station>/cmd/response``. ``COMMANDS`` is
the one table of kinds: parsing checks a payload against it and ``Command.apply`` calls the line's method of the
same name (``LineControl``, which the loop implements).

| kind            | fields                       | meaning                                               |
|-----------------|------------------------------|-------------------------------------------------------|
| set_threshold   | value: number > 0            | raw image-score threshold used from the next frame    |
| set_sensitivity | value: number in [0, 1]      | 0.5 keeps the threshold; higher rejects more          |
| pause           | -                            | stop judging frames                                   |
| resume          | -                            | judge frames again                                    |
| trigger         | part_id: non-empty string    | software trigger: judge the next frame as this part   |

Hostile payloads are bounded before anything else looks at them: at most ``MAX_PAYLOAD_BYTES``, one flat JSON
object (values are strings or numbers; deeper nesting is refused, so the JSON parser never recurses far), no control
characters in ``id`` or ``part_id``, and nothing from the payload echoed back longer than ``ECHO_CHARS``. When the
station has a command key (``command_auth``), a command must also carry a valid signature. How far a threshold may
move is the line's business (``pipeline.loop``, from the bundle's ``thresholds.command_range``).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from edge_inspector.errors import EdgeInspectorError
from edge_inspector.log import kv
from edge_inspector.publish.command_auth import SIGNATURE_FIELDS, CommandAuth, CommandAuthError

log = logging.getLogger(__name__)

MAX_PART_ID_LENGTH = 128
MAX_ID_LENGTH = 128
MAX_PAYLOAD_BYTES = 4096
"""Largest command payload read; a command is a few dozen bytes."""
ECHO_CHARS = 64
"""Longest piece of a rejected payload quoted back in an error message (and so in the log)."""


def clip(value: Any) -> str:
    """``repr(value)`` cut to ``ECHO_CHARS`` characters, saying how long it was: safe to echo and to log."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


class CommandError(EdgeInspectorError):
    """A command payload is malformed or asks for something not allowed; the message says what and why."""

    def __init__(self, message: str, request_id: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.kind = kind
        """The command kind when it was recognised, for the response."""


class LineControl(Protocol):
    """What commands act on: one method per command kind, named after it (``pipeline.loop.InspectionLoop``)."""

    def set_threshold(self, value: float) -> None: ...

    def set_sensitivity(self, value: float) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def trigger(self, part_id: str) -> None: ...


def _number(doc: dict[str, Any], kind: str, request_id: str | None) -> float:
    value = doc.get("value")
    # bool is an int subclass in Python, but "value": true is surely a mistake.
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer literal too large for a float
        number = math.nan
    if not math.isfinite(number):
        raise CommandError(f"{kind}: 'value' must be a finite number, got {clip(value)}", request_id, kind)
    return number


def _threshold(doc: dict[str, Any], kind: str, request_id: str | None) -> float:
    value = _number(doc, kind, request_id)
    if value <= 0:
        raise CommandError(f"{kind}: 'value' must be > 0, got {value}", request_id, kind)
    return value


def _sensitivity(doc: dict[str, Any], kind: str, request_id: str | None) -> float:
    value = _number(doc, kind, request_id)
    if not 0.0 <= value <= 1.0:
        raise CommandError(f"{kind}: 'value' must be within [0, 1], got {value}", request_id, kind)
    return value


def _part_id(doc: dict[str, Any], kind: str, request_id: str | None) -> str:
    part_id = doc.get("part_id")
    if (not isinstance(part_id, str) or not part_id.strip() or len(part_id) > MAX_PART_ID_LENGTH
            or not part_id.isprintable()):
        raise CommandError(
            f"{kind}: 'part_id' must be a non-empty string of at most {MAX_PART_ID_LENGTH} printable characters, "
            f"got {clip(part_id)}", request_id, kind)
    return part_id


@dataclass(frozen=True)
class CommandKind:
    """One row of the command table.

    Attributes:
        argument: The one field the command takes besides ``kind`` and ``id`` ("value", "part_id"), or None. It is
            also the ``Command`` attribute that carries it and the ``LineControl`` method's parameter.
        read: Validates the argument in the JSON document and returns it (raises ``CommandError``).
        changes_settings: The command changes what the line does (threshold, pause), so the retained status is
            republished after it.
    """

    argument: str | None = None
    read: Callable[[dict[str, Any], str, str | None], Any] | None = None
    changes_settings: bool = True


COMMANDS: dict[str, CommandKind] = {
    "set_threshold": CommandKind("value", _threshold),
    "set_sensitivity": CommandKind("value", _sensitivity),
    "pause": CommandKind(),
    "resume": CommandKind(),
    "trigger": CommandKind("part_id", _part_id, changes_settings=False),
}
"""Every command kind: parsing validates against it, ``Command.apply`` calls the ``LineControl`` method it names."""


@dataclass(frozen=True)
class Command:
    """One validated command.

    Attributes:
        kind: One of ``COMMANDS``.
        value: The number for set_threshold / set_sensitivity, else None.
        part_id: The part id for trigger, else None.
        request_id: The optional ``id`` of the request, echoed in the response.
    """

    kind: str
    value: float | None = None
    part_id: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in COMMANDS:
            raise ValueError(f"unknown command kind {self.kind!r}; allowed: {', '.join(COMMANDS)}")

    @property
    def changes_settings(self) -> bool:
        return COMMANDS[self.kind].changes_settings

    def apply(self, line: LineControl) -> None:
        """Call the ``line`` method named after this command's kind, with its argument."""
        argument = COMMANDS[self.kind].argument
        method = getattr(line, self.kind)
        if argument is None:
            method()
        else:
            method(getattr(self, argument))


def _keys(keys: list[str], shown: int = 5) -> str:
    """Key names for an error message: each clipped, at most ``shown`` of them."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(key if len(key) <= ECHO_CHARS and key.isprintable() else clip(key) for key in keys[:shown]) + more


def _document(payload: bytes) -> dict[str, Any]:
    """The payload as one flat JSON object, within the size and nesting limits (raises ``CommandError``)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"command too large: {len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    except RecursionError:  # the C parser's own depth guard; the size bound keeps this cheap
        raise CommandError("malformed command: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise CommandError(f"a command must be a JSON object, got {type(doc).__name__}")
    nested = sorted(key for key, value in doc.items() if isinstance(value, (dict, list)))
    if nested:
        raise CommandError(f"a command is one flat JSON object; {_keys(nested)} hold(s) an object or array")
    return doc


def _request_id(doc: dict[str, Any]) -> str | None:
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH
                                   or not request_id.isprintable()):
        raise CommandError(f"'id' must be a string of at most {MAX_ID_LENGTH} printable characters, "
                           f"got {clip(request_id)}")
    return request_id


def parse_command(payload: bytes, auth: CommandAuth | None = None) -> Command:
    """Validate one command payload.

    Args:
        payload: The raw MQTT payload (UTF-8 JSON object).
        auth: Checks the signature when the station has a command key; None or a key-less one accepts unsigned
            commands.

    Returns:
        The validated command.

    Raises:
        CommandError: The payload is too large, not JSON, not a flat object, unsigned or badly signed (with a key),
            has an unknown kind or key, or a value out of range.

    >>> parse_command(b'{"kind": "set_sensitivity", "value": 0.7}')
    Command(kind='set_sensitivity', value=0.7, part_id=None, request_id=None)
    """
    doc = _document(payload)
    request_id = _request_id(doc)
    if auth is not None:
        try:
            auth.check(doc)
        except CommandAuthError as exc:
            raise CommandError(str(exc), request_id) from None
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise CommandError(f"missing 'kind' (one of: {', '.join(COMMANDS)})", request_id)
    if kind not in COMMANDS:
        close = difflib.get_close_matches(kind[:ECHO_CHARS], list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CommandError(f"unknown kind {clip(kind)}.{hint} Allowed: {', '.join(COMMANDS)}", request_id)
    spec = COMMANDS[kind]
    allowed = {"kind", "id", *SIGNATURE_FIELDS, *([spec.argument] if spec.argument else [])}
    extra = sorted(set(doc) - allowed)
    if extra:
        raise CommandError(f"{kind}: unknown key(s) {_keys(extra)}; allowed: "
                           f"{', '.join(sorted(allowed))}", request_id, kind)
    if spec.argument is None:
        return Command(kind, request_id=request_id)
    return Command(kind, request_id=request_id, **{spec.argument: spec.read(doc, kind, request_id)})


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


def answer(payload: bytes, handler: Callable[[Command], dict] | None, auth: CommandAuth | None = None) -> bytes:
    """Parse one command payload, hand it to ``handler`` and return the response document; never raises.

    Args:
        payload: The raw MQTT payload.
        handler: Applies a valid command and returns a dict for the response, or None when the station takes no
            commands. An EdgeInspectorError or ValueError it raises is answered with its message; anything else
            as "command failed".
        auth: The station's command authentication (see ``parse_command``).
    """
    try:
        command = parse_command(payload, auth)
    except CommandError as exc:
        log.warning("rejected command", extra=kv(error=str(exc)))
        return response(exc.request_id, exc.kind, False, str(exc))
    except Exception as exc:  # a parser bug must answer too: this runs on the MQTT network thread
        log.exception("command parsing failed")
        return response(None, None, False, f"command rejected: {type(exc).__name__}")
    if handler is None:
        return response(command.request_id, command.kind, False, "this station does not accept commands")
    try:
        result = handler(command) or {}
    except (EdgeInspectorError, ValueError) as exc:
        log.warning("command refused", extra=kv(kind=command.kind, id=command.request_id, error=str(exc)))
        return response(command.request_id, command.kind, False, str(exc))
    except Exception as exc:  # a failing handler must answer, not kill the caller's (network) thread
        log.exception("command handler failed", extra=kv(kind=command.kind))
        return response(command.request_id, command.kind, False, f"command failed: {type(exc).__name__}: {exc}")
    log.info("command applied", extra=kv(kind=command.kind, id=command.request_id))
    return response(command.request_id, command.kind, True, result)
