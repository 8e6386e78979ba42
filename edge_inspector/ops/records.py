"""Benchmark and evaluation records: the machine they ran on (speed figures mean little without it) and the
timestamped JSON file each benchmark script writes under ``benchmarks/results/``."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
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
    return " ".join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_record(out_dir: str | Path, stem: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``<out_dir>/<stem>_<UTC time>.json`` (the folder made if needed), say where, return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path
