"""Which kernels ONNX Runtime actually runs for a graph, and where its time goes: its own profiler, read back.

A QDQ graph says what *may* run on integers; ONNX Runtime's optimizers decide what does (a ``DQ -> MatMul`` pair it
does not fuse runs as a dequantize and a float MatMul). The profiler records every kernel it executed with its op
type and duration, after all rewrites, so this is the check that the integer kernels are the ones running::

    profile = profile_kernels(graph, image, EngineSettings(intra_op_threads=2), runs=20)
    profile.count("MatMulIntegerToFloat"), profile.table()
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import load_session


@dataclass
class KernelProfile:
    """Per op type: the nodes that ran it (one run) and its mean time per run, in microseconds."""

    runs: int
    nodes: dict[str, set[str]] = field(default_factory=dict)
    total_us: dict[str, float] = field(default_factory=dict)

    def count(self, op_type: str) -> int:
        """How many nodes ran as ``op_type`` kernels."""
        return len(self.nodes.get(op_type, ()))

    def mean_us(self, op_type: str) -> float:
        return self.total_us.get(op_type, 0.0) / max(self.runs, 1)

    def by_time(self) -> list[tuple[str, int, float]]:
        """(op type, nodes, mean us per run), slowest first."""
        return sorted(((op, len(self.nodes[op]), self.mean_us(op)) for op in self.nodes), key=lambda r: -r[2])

    def table(self, top: int = 20) -> str:
        total = sum(self.total_us.values()) / max(self.runs, 1)
        lines = [f"{'op':<24} {'nodes':>5} {'us/run':>9} {'share':>6}"]
        for op, count, us in self.by_time()[:top]:
            lines.append(f"{op:<24} {count:>5} {us:>9.1f} {us / max(total, 1e-9):>6.1%}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {op: {"nodes": count, "mean_us": round(us, 2)} for op, count, us in self.by_time()}


def profile_kernels(graph: onnx.ModelProto, image: np.ndarray, settings: EngineSettings | None = None,
                    runs: int = 10, warmup: int = 2) -> KernelProfile:
    """Run ``graph`` (through ``load_session``, as the line does) on one uint8 image with ONNX Runtime's profiler on.

    Args:
        image: one (H, W, 3) image or a (1, H, W, 3) batch.
        runs: runs counted, after ``warmup`` runs whose events are dropped (first runs allocate and pre-pack).
    """
    batch = image[None] if image.ndim == 3 else image
    with tempfile.TemporaryDirectory(prefix="ei-ort-profile-") as tmp:
        prefix = os.path.join(tmp, "profile")
        session = load_session(graph, settings or EngineSettings(), profile_prefix=prefix).session
        name = session.get_inputs()[0].name
        for _ in range(warmup + runs):
            session.run(None, {name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    return _read_events(events, runs, warmup)


def _read_events(events: list[dict], runs: int, warmup: int) -> KernelProfile:
    """Node events of the last ``runs`` model runs (ORT marks each with a ``model_run`` event)."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first = starts[warmup] if len(starts) > warmup else 0
    profile = KernelProfile(runs)
    nodes: dict[str, set[str]] = defaultdict(set)
    total: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < first:
            continue
        op = event.get("args", {}).get("op_name", "?")
        nodes[op].add(event["name"][: -len("_kernel_time")])
        total[op] += float(event.get("dur", 0))
    profile.nodes, profile.total_us = dict(nodes), dict(total)
    return profile
