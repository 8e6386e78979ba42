"""Readiness of the line for /readyz.

``readiness`` turns the loop's own state, its ``pipeline.sinks.LatestResult`` (whether the newest part was judged
fail-safe, and when it was judged) and the MQTT publisher's health (are results reaching the broker?) into ready /
not ready with the reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edge_inspector.pipeline.sinks import LatestResult

MIN_STUCK_AFTER_S = 10.0
"""Shortest wait for a judged part before a line with parts waiting counts as stuck."""


@dataclass
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "reason": "; ".join(self.reasons) or None, **self.details}


def readiness(loop: Any, latest: LatestResult, since: float, stuck_after_s: float | None = None,
              publisher: Any | None = None) -> Readiness:
    """Ready when the engine is loaded, the source delivers, the loop runs and is not stuck, and results reach
    the broker.

    Not ready (each adds a reason): the loop failed or ended; the engine cannot describe itself (closed); the
    source is being reopened; the line is paused; the newest part was judged fail-safe (engine error or timeout);
    parts are waiting but none was judged for ``stuck_after_s`` (default: 3 x the inference timeout, at least
    ``MIN_STUCK_AFTER_S``); the publisher reports a problem (not connected, the spool cannot be written, the broker
    refuses results: ``PublisherHealth.problems``).

    Args:
        loop: the running ``pipeline.loop.InspectionLoop`` (started).
        latest: the sink the loop feeds.
        since: monotonic time the loop started (for a loop that has not judged anything yet).
        publisher: the MQTT ``publish.mqtt.ResultPublisher``, or None when MQTT is off.
    """
    stuck_after_s = stuck_after_s or max(MIN_STUCK_AFTER_S, 3 * loop.timeout_s)
    snap = loop.snapshot()
    counts = dict(loop.stats.counts)  # without the capture reader's drops, which never entered the queues
    pending = counts.get("frames_read", 0) - counts.get("dropped", 0) - counts.get("judged", 0)
    error, judged_at = latest.outcome()
    idle_s = time.monotonic() - (judged_at or since)
    reasons = []
    if snap["failure"]:
        reasons.append(f"loop failed: {snap['failure']}")
    elif loop.wait(0):
        reasons.append("the loop has stopped (source ended or stop requested)")
    try:
        loop.engine.describe()
    except Exception as exc:  # a closed or broken engine
        reasons.append(f"engine not loaded: {type(exc).__name__}: {exc}")
    source = snap["source"]
    if source["status"] != "ok":
        reasons.append(f"source {source['name']} is {source['status']} (reopened {source['reopens']} times so far)")
    if snap["paused"]:
        reasons.append("paused by command")
    if error:
        reasons.append(f"the latest part was judged fail-safe: {error}")
    if pending > 0 and idle_s > stuck_after_s:
        reasons.append(f"stuck: {pending} part(s) waiting, none judged for {idle_s:.0f} s")
    details = {"mode": snap["mode"], "paused": snap["paused"], "source": source, "engine": loop.engine.name,
               "judged": counts.get("judged", 0), "pending": pending, "idle_s": round(idle_s, 3)}
    if publisher is not None:
        health = publisher.health
        reasons += [f"results: {problem}" for problem in health.problems]
        details["results_pending"] = health.pending
    return Readiness(not reasons, reasons, details)
