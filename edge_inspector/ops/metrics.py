"""Prometheus metrics of a running line, read from the loop's own statistics at scrape time.

The loop already counts verdicts, drops and errors and keeps per-stage latency samples (``pipeline.stats``); a
custom collector turns that live state into metric families when Prometheus scrapes, so nothing is counted twice
and the loop does no extra work per part.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_inspector.results import InspectionResult, Verdict

log = logging.getLogger(__name__)

PREFIX = "edge_inspector"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram buckets: fine around a CPU model's 5-50 ms, coarse up to the inference timeout's range."""
QUANTILES = (("0.5", "p50"), ("0.99", "p99"))
"""Latency quantiles exported, as (Prometheus label, LoopStats key)."""

# counter name -> (LoopStats count key, help)
_COUNTS = {
    "frames_read": ("frames_read", "Frames taken from the source."),
    "frames_dropped": ("dropped", "Frames replaced by a newer one before they were judged (free-run mode)."),
    "inference_errors": ("errors", "Parts judged fail-safe: preprocessing or inference failed or timed out."),
    "inference_timeouts": ("timeouts", "Inferences that overran decision.inference_timeout_s."),
    "sink_errors": ("sink_errors", "Failures of a result consumer (MQTT publisher, archive, console)."),
}


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", help_, value=value)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_, value=value)


class LineCollector(Collector):
    """Collects one line's metrics from its ``InspectionLoop`` and, when it publishes, its MQTT publisher.

    Args:
        loop: the running ``pipeline.loop.InspectionLoop``.
        publisher: the ``publish.mqtt.ResultPublisher`` (anything with a ``health`` snapshot), or None.
    """

    def __init__(self, loop: Any, publisher: Any | None = None):
        self.loop = loop
        self.publisher = publisher

    def collect(self) -> Iterator[Metric]:
        snap = self.loop.snapshot()
        counts = snap["counts"]
        parts = CounterMetricFamily(f"{PREFIX}_parts", "Judged parts by verdict.", labels=["verdict"])
        for verdict in Verdict:
            parts.add_metric([verdict.value], counts.get(verdict.value, 0))
        yield parts
        for name, (key, help_) in _COUNTS.items():
            yield _counter(name, help_, counts.get(key, 0))
        yield from self._latency(snap["latency_ms"])
        source = snap["source"]
        yield _gauge("source_up", "1 while the source delivers, 0 while it is being reopened.",
                     1.0 if source["status"] == "ok" else 0.0)
        yield _counter("source_reopens", "Successful reopens of a source that stopped delivering.", source["reopens"])
        yield _gauge("paused", "1 while the line is paused by a command.", 1.0 if snap["paused"] else 0.0)
        yield _gauge("threshold", "Effective raw image-score threshold (after sensitivity).", snap["threshold"])
        yield self._engine_info()
        if self.publisher is not None:
            yield from self._publisher()

    def _latency(self, latency_ms: dict[str, dict[str, float]]) -> Iterator[Metric]:
        # Quantiles over the loop's latest samples per stage (a bounded window), not over the process lifetime.
        quantiles = GaugeMetricFamily(f"{PREFIX}_stage_latency_seconds",
                                      "Per-stage latency quantile over the latest parts (pipeline.stats.WINDOW).",
                                      labels=["stage", "quantile"])
        means = GaugeMetricFamily(f"{PREFIX}_stage_latency_mean_seconds",
                                  "Per-stage mean latency over the latest parts.", labels=["stage"])
        for stage, summary in latency_ms.items():
            for label, key in QUANTILES:
                quantiles.add_metric([stage, label], summary[key] / 1e3)
            means.add_metric([stage], summary["mean"] / 1e3)
        yield quantiles
        yield means

    def _engine_info(self) -> InfoMetricFamily:
        labels = {"model_id": self.loop.manifest.model_id, "backend": self.loop.engine.name}
        try:
            labels.update(self.loop.engine.describe())
        except Exception:  # a closed engine cannot describe itself; the scrape must still answer
            log.debug("engine describe failed during scrape", exc_info=True)
        return InfoMetricFamily(f"{PREFIX}_engine", "The model and inference engine the line runs.", value=labels)

    def _publisher(self) -> Iterator[Metric]:
        health = self.publisher.health
        yield _gauge("mqtt_connected", "1 while connected to the MQTT broker (and paho's network thread runs).",
                     1.0 if health.connected else 0.0)
        yield _gauge("spool_pending", "Results not yet acknowledged by the broker (disk spool and memory).",
                     health.pending)
        yield _counter("results_acked", "Results acknowledged by the broker since start.", health.acked)
        yield _counter("spool_dropped_pass", "PASS results the spool size bound discarded.", health.dropped_pass)
        yield _counter("mqtt_disconnects", "Lost connections to the broker.", health.disconnects)
        yield _counter("mqtt_restarts", "MQTT clients restarted by the watchdog (dead network thread, stalled "
                                        "delivery).", health.restarts)
        yield _counter("mqtt_callback_errors", "Exceptions contained in MQTT callbacks.", health.callback_errors)
        yield _gauge("mqtt_refused", "1 while the broker refuses result messages (its ACL).",
                     1.0 if health.refused else 0.0)
        yield _gauge("spool_failing", "1 while the result spool cannot be written (results held in memory).",
                     1.0 if health.storage_error else 0.0)
        yield _gauge("results_held_in_memory", "Results held in memory because the spool cannot be written.",
                     health.held)
        yield _counter("results_unspooled", "Results that could not be written to the spool, since start.",
                       health.unspooled)
        lost = CounterMetricFamily(f"{PREFIX}_results_lost", "Results given up with no copy left (memory bound "
                                   "while the spool fails), by verdict class, since start.", labels=["verdict"])
        lost.add_metric(["PASS"], health.lost_pass)
        lost.add_metric(["FAIL_OR_UNKNOWN"], health.lost_fail)
        yield lost
        yield _counter("spool_quarantined", "Damaged spool files moved aside (readable results replayed).",
                       health.quarantined)


class LatencyHistograms:
    """A result sink that observes every part's per-stage latency into a Prometheus histogram.

    The quantile gauges of ``LineCollector`` describe the latest window of one station; the histogram's cumulative
    buckets can be aggregated across stations and over any range in PromQL
    (``histogram_quantile(0.99, sum by (le) (rate(edge_inspector_part_latency_seconds_bucket{stage="total"}[5m])))``).
    Register ``histogram`` in the registry that is scraped.
    """

    def __init__(self) -> None:
        self.histogram = Histogram(f"{PREFIX}_part_latency_seconds",
                                   "Per-part latency by stage (decode, preprocess, inference, decision, overlay, "
                                   "total from capture to verdict).", ["stage"], registry=None,
                                   buckets=LATENCY_BUCKETS_S)

    def handle(self, result: InspectionResult) -> None:
        for stage, ms in result.latency_ms.items():
            self.histogram.labels(stage).observe(ms / 1e3)

    def close(self) -> None:
        pass
