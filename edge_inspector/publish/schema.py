"""The JSON message published for every judged part, and how an ``InspectionResult`` becomes one.

The schema is a pydantic model, so one definition gives the serializer, a validator consumers can reuse
(``ResultMessage.model_validate_json(payload)``) and the JSON Schema printed in ``deploy/MQTT.md``
(``ResultMessage.model_json_schema()``). Bump ``SCHEMA_VERSION`` on any change a consumer could notice.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_inspector.results import InspectionResult, Verdict

SCHEMA_VERSION = 1


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegionMessage(_Message):
    """One connected defect region, in full-frame pixel coordinates."""

    x: int = Field(ge=0, description="Left edge of the bounding box (px).")
    y: int = Field(ge=0, description="Top edge of the bounding box (px).")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    area_px: int = Field(ge=0, description="Pixels inside the region.")
    max_score: float = Field(description="Highest raw anomaly-map value inside the region.")
    contour: list[tuple[int, int]] = Field(description="Simplified outline as [x, y] points (full-frame px).")


class ResultMessage(_Message):
    """Payload of ``<prefix>/<station>/result`` (QoS 1, not retained)."""

    schema_version: Literal[1] = Field(description="Version of this schema.")
    station: str = Field(min_length=1, description="Station name from the configuration.")
    sequence: int = Field(ge=1, description="Per-station sequence number; persisted across restarts; "
                                            "consumers deduplicate on it.")
    part_id: str = Field(description="Trigger id from the PLC, else '<station>-<run_id>-<frame_index>' "
                                     "(run_id: the run's start in Unix seconds, frame_index: the source's frame counter).")
    captured_at: str = Field(description="Frame capture time, ISO 8601 UTC with microseconds.")
    captured_at_unix: float = Field(description="Frame capture time, Unix seconds.")
    decided_at: str = Field(description="Decision time, ISO 8601 UTC with microseconds.")
    decided_at_unix: float = Field(description="Decision time, Unix seconds.")
    verdict: Literal["PASS", "FAIL", "UNKNOWN"] = Field(
        description="UNKNOWN is the fail-safe outcome (inference error or timeout): treat it as a reject.")
    score: float | None = Field(description="Raw image score; null when inference failed.")
    normalized_score: float | None = Field(description="0.5 = threshold; >= 0.5 is FAIL; null when inference failed.")
    threshold: float = Field(description="Raw threshold used for this decision (after sensitivity).")
    regions: list[RegionMessage] = Field(description="Defect regions; empty for a PASS.")
    model_id: str = Field(description="Model bundle id that judged the part.")
    latency_ms: dict[str, float] = Field(
        description="Per-stage latency in ms: decode, preprocess, inference, decision, overlay, total.")
    source: str = Field(description="Capture source (camera index, file, URL, 'demo').")
    frame_index: int = Field(ge=0, description="Frame number within the source.")
    error: str | None = Field(description="Why the verdict is fail-safe, when it is; else null.")
    mask_png_base64: str | None = Field(
        None, description="Defect mask (uint8, 255 = defect, full frame) as base64 PNG; only on FAIL results "
                          "when mqtt.include_mask is on, else absent.")
    unspooled: bool | None = Field(
        None, description="true when the station could not write this result to its disk spool and sent it from "
                          "memory (a crash before delivery would have lost it); absent otherwise.")

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, optional fields left out when unset."""
        return self.model_dump_json(exclude_unset=True).encode()


def iso_utc(unix_s: float) -> str:
    """Unix seconds as ISO 8601 UTC with microseconds, e.g. ``2026-11-25T18:20:45.123456+00:00``."""
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).isoformat(timespec="microseconds")


def encode_mask_png(mask) -> str:
    """A uint8 (H, W) mask as base64 PNG text."""
    import cv2  # imported here: only results that carry a mask pay for it

    ok, png = cv2.imencode(".png", mask)
    if not ok:
        raise ValueError(f"could not encode a mask of shape {getattr(mask, 'shape', None)} as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def _optional_float(value) -> float | None:
    # numpy scalars (float32 in particular) are not floats to pydantic; the engine hands them out.
    return None if value is None else float(value)


def build_message(result: InspectionResult, station: str, include_mask: bool = False,
                  unspooled: bool = False) -> ResultMessage:
    """The message for ``result`` (whose ``sequence`` must already be assigned).

    Args:
        result: The judged part.
        station: Station name placed in the message.
        include_mask: Attach the defect mask as base64 PNG, for non-PASS results that have one.
        unspooled: Mark the message as sent without a spool copy (``"unspooled": true``).
    """
    fields = {
        "schema_version": SCHEMA_VERSION,
        "station": station,
        "sequence": result.sequence,
        "part_id": result.part_id,
        "captured_at": iso_utc(result.captured_at),
        "captured_at_unix": float(result.captured_at),
        "decided_at": iso_utc(result.decided_at),
        "decided_at_unix": float(result.decided_at),
        "verdict": Verdict(result.verdict).value,
        "score": _optional_float(result.score),
        "normalized_score": _optional_float(result.normalized_score),
        "threshold": float(result.threshold),
        "regions": [
            {"x": int(r.x), "y": int(r.y), "width": int(r.width), "height": int(r.height),
             "area_px": int(r.area_px), "max_score": float(r.max_score),
             "contour": [(int(px), int(py)) for px, py in r.contour]}
            for r in result.regions
        ],
        "model_id": result.model_id,
        "latency_ms": {k: float(v) for k, v in result.latency_ms.items()},
        "source": result.source,
        "frame_index": int(result.frame_index),
        "error": result.error,
    }
    if include_mask and result.mask is not None and result.verdict != Verdict.PASS:
        fields["mask_png_base64"] = encode_mask_png(result.mask)
    if unspooled:
        fields["unspooled"] = True
    return ResultMessage(**fields)
