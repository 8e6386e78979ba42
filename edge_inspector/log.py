"""Structured, quiet-by-default logging.

Every record is one line: ``time level logger message key=value ...`` (or one JSON object with ``--log-json``).
Pass fields with ``log.info("msg", extra={"fields": {...}})`` or the ``kv`` helper.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def kv(**fields: Any) -> dict[str, Any]:
    """Shorthand for ``extra=kv(a=1)`` so call sites stay short."""
    return {"fields": fields}


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [ts, record.levelname.lower(), record.name, record.getMessage()]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={value}")
        line = " ".join(str(p) for p in parts)
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
