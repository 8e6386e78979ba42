"""Structured, quiet-by-default logging.

Every record is one line: ``time level logger message key=value ...`` (or one JSON object with ``--log-json``).
Pass fields with ``log.info("msg", extra={"fields": {...}})`` or the ``kv`` helper.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(value: Any) -> str:
    """``str(value)`` with control characters written as escapes, so text from outside (an MQTT payload, a file
    name) cannot start a forged line in a plain-text log."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], str(value))


def kv(**fields: Any) -> dict[str, Any]:
    """Shorthand for ``extra=kv(a=1)`` so call sites stay short."""
    return {"fields": fields}


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [ts, record.levelname.lower(), record.name, _escaped(record.getMessage())]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_escaped(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "WARNING", as_json: bool = False) -> None:
    """Configure the ``edge_inspector`` logger tree once, writing to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else _KeyValueFormatter())
    root = logging.getLogger("edge_inspector")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
