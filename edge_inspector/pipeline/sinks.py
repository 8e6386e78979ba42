"""Result sinks: the console printer, a collector for summaries, and adapters for the publisher and the archive.

The adapters only call ``publish(result)`` / ``add(result)``, so the pipeline does not import ``publish``.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from edge_inspector.pipeline.results import InspectionResult, Verdict


class Sink(Protocol):
    """Consumes results in order from the loop's publish thread (console, MQTT publisher, archive, preview)."""

    def handle(self, result: InspectionResult) -> None: ...

    def close(self) -> None: ...


def format_result(result: InspectionResult) -> str:
    """One human line per part, e.g. ``part-00003  FAIL  0.67  score 0.183 > 0.090  2 regions  14.2 ms``."""
    if result.score is None:
        judged = f"{result.verdict.value:7s} ----  {result.error}"
    else:
        sign = ">=" if result.verdict == Verdict.FAIL else "<"
        judged = (f"{result.verdict.value:7s} {result.normalized_score:.2f}  "
                  f"score {result.score:.4g} {sign} {result.threshold:.4g}")
    parts = [f"{result.source or result.part_id:32s}", judged]
    if result.regions:
        parts.append(f"{len(result.regions)} region{'s' if len(result.regions) > 1 else ''}")
    parts.append(f"{result.latency_ms.get('total', 0.0):.1f} ms")
    if result.ground_truth is not None:
        parts.append("truth: " + ("defect" if result.ground_truth else "good"))
    return "  ".join(parts)


class ConsoleSink:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def handle(self, result: InspectionResult) -> None:
        print(format_result(result), file=self.stream, flush=True)

    def close(self) -> None:
        self.stream.flush()


class CollectingSink:
    """Keeps every result's verdict data (without images) for summaries and tests."""

    def __init__(self, keep_images: bool = False):
        self.keep_images = keep_images
        self.results: list[InspectionResult] = []

    def handle(self, result: InspectionResult) -> None:
        if not self.keep_images:
            result = InspectionResult(**{**result.__dict__, "frame": None, "overlay": None})
        self.results.append(result)

    def close(self) -> None:
        pass


class PublisherSink:
    """Hands results to the MQTT ``ResultPublisher`` (which spools them and assigns sequence numbers)."""

    def __init__(self, publisher):
        self.publisher = publisher

    def handle(self, result: InspectionResult) -> None:
        self.publisher.publish(result)

    def close(self) -> None:
        self.publisher.stop()


class ArchiveSink:
    """Keeps FAIL frames (and a sample of PASS) through the publish package's ``Archive``."""

    def __init__(self, archive):
        self.archive = archive

    def handle(self, result: InspectionResult) -> None:
        self.archive.add(result)

    def close(self) -> None:
        pass


class PreviewSink:
    """Keeps the newest picture for a preview window drawn by the main thread (GUI calls belong there)."""

    def __init__(self) -> None:
        self.latest = None

    def handle(self, result: InspectionResult) -> None:
        self.latest = result.overlay if result.overlay is not None else result.frame

    def close(self) -> None:
        pass
