"""Benchmark and evaluation records: the machine they ran on (speed figures mean little without it), the JSON file
each benchmark writes (``benchmarks/results/<stem>_<UTC time>.json``) and the text tables people read.

Every record starts the same way (``new_record``): the command that reproduces it, the UTC date, the machine. It sits
beside the engines so that both halves can write one: the compile side may import ``engines``, not ``ops``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows (often just ``x86_64``)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(*packages: str) -> dict[str, Any]:
    """CPU, usable cores, platform, Python, the load average now, and the versions of ``packages`` installed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for package in packages:
        try:
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = None
    return facts


def script_command() -> str:
    """The command line that reproduces this benchmark script's run, as the README gives it."""
    return shlex.join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def new_record(command: str, *packages: str, **fields: Any) -> dict[str, Any]:
    """A results document: ``command`` (what reproduces it), the UTC date, the machine with the versions of
    ``packages``, then ``fields``."""
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"command": command, "date": date, "machine": machine(*packages), **fields}


def write_record(out_dir: str | Path, stem: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``<out_dir>/<stem>_<UTC time>.json`` (the folder made if needed), say where, return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json(path, doc)
    print(f"wrote {path}")
    return path


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``path`` (its folder made if needed), as ``write_record`` does, without a time stamp."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return out


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int | None = None,
                 rule: bool = False) -> str:
    """A fixed-width text table: columns two spaces apart, each as wide as its widest cell.

    Args:
        header: column titles.
        rows: the cells of each row, as text. A row shorter than the header ends in a note (e.g. why it has no
            figures), written after its other cells without widening any column.
        right_from: columns from this index on are right-aligned (figures); default: all left-aligned.
        rule: a line of dashes under the header.
    """
    def columns(row: Sequence[str]) -> Sequence[str]:
        return row if len(row) >= len(header) else row[:-1]

    widths = [max([len(header[i])] + [len(columns(row)[i]) for row in rows if i < len(columns(row))])
              for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(width) if right_from is not None and i >= right_from else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(columns(row), widths))]
        note = [row[-1]] if len(row) < len(header) else []
        return "  ".join(cells + note).rstrip()

    lines = [line(header)] + [line(row) for row in rows]
    if rule:
        lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
