"""TensorRT plan side-cars: what a plan was built for, and whether it fits this machine.

A TensorRT plan only runs on the GPU model and the exact TensorRT version that built it, and only means something for
the ONNX graph it was built from. The GPU model is more than its name: the CUDA driver calls every Jetson Orin module
'Orin' (AGX, NX and Nano alike), so the side-car also records the SM count, the memory and, where the board has one,
``/proc/device-tree/model``; a plan tuned on a 16-SM AGX Orin is refused on an 8-SM Orin Nano. Each plan in a bundle's ``plans/`` folder therefore has a JSON side-car with the
same stem (``orin-trt10.3.0.30.plan`` + ``orin-trt10.3.0.30.json``). The plan file itself stays a plain TensorRT
plan (no header glued in front), so ``trtexec --loadEngine`` still reads it.

This module is stdlib only: the ONNX Runtime-only line and the tests use it without TensorRT installed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edge_inspector.errors import BundleError, EngineError, MissingDependencyError, PlanMismatchError

SIDECAR_FORMAT = 2
"""2: module identity (SM count, memory, board model) and TensorRT's per-layer engine information."""
MEMORY_TOLERANCE = 0.10
"""Relative difference in reported GPU memory still taken as the same module (carve-outs vary between releases)."""
PLAN_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class DeviceInfo:
    """What this machine offers the TensorRT path; ``None`` fields mean 'not available here'."""

    gpu_name: str | None = None
    """As the CUDA driver reports it, e.g. 'NVIDIA GeForce RTX 4090' or 'Orin'."""
    compute_capability: str | None = None
    """'major.minor', e.g. '8.7'."""
    tensorrt_version: str | None = None
    """``tensorrt.__version__``, e.g. '10.3.0.30'."""
    sm_count: int | None = None
    """Streaming multiprocessors (16 on an AGX Orin 64 GB, 8 on an Orin Nano 8 GB)."""
    total_memory_mb: int | None = None
    module_model: str = ""
    """``/proc/device-tree/model`` (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'); '' where there is none."""
    gpu_problem: str | None = None
    """Why no GPU was found (pycuda missing, no driver, no device), when ``gpu_name`` is None."""

    def unavailable_reason(self) -> str | None:
        """Why TensorRT cannot run here, or None when it can."""
        if not self.tensorrt_version:
            return "TensorRT not installed"
        if not self.gpu_name:
            return self.gpu_problem or "no NVIDIA GPU found"
        return None


@dataclass
class PlanSidecar:
    """Metadata written next to every plan by ``edge-inspector build-engine``."""

    plan_file: str
    """File name of the plan, relative to the side-car's folder."""
    plan_sha256: str
    model_id: str
    onnx_sha256: str
    """sha256 of the bundle's ONNX graph (before FP16 preparation) the plan was built from."""
    gpu_name: str
    compute_capability: str
    sm_count: int
    total_memory_mb: int
    module_model: str
    """``/proc/device-tree/model`` of the board that built the plan ('' where there is none)."""
    tensorrt_version: str
    edge_inspector_version: str
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    bit_plan: dict[str, str] = field(default_factory=dict)
    keep_fp32_nodes: list[str] = field(default_factory=list)
    """Node names left in FP32 when the float parts were converted to FP16."""
    build_options: dict[str, Any] = field(default_factory=dict)
    build_timings_s: dict[str, float] = field(default_factory=dict)
    engine_layers: list[dict[str, Any]] = field(default_factory=list)
    """Per engine layer: name, type, precision, tactic, as TensorRT's engine inspector reports them after the build."""
    precision_summary: dict[str, Any] = field(default_factory=dict)
    """Convolutions per precision (INT8 / FP16 / FP32), unfused Q/DQ layers: see ``engines.trt_layers``."""
    parity: dict[str, Any] = field(default_factory=dict)
    """Parity and latency summary against ONNX Runtime, filled in after the build (empty when skipped)."""
    format: int = SIDECAR_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> PlanSidecar:
        if not isinstance(data, dict):
            raise BundleError(f"{origin} is not a plan side-car (expected a JSON object)")
        if data.get("format") != SIDECAR_FORMAT:
            raise BundleError(
                f"{origin} has side-car format {data.get('format')!r}; this edge-inspector reads format "
                f"{SIDECAR_FORMAT}. Rebuild the plan with: edge-inspector build-engine"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{origin}: unknown side-car keys {unknown}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise BundleError(f"{origin}: side-car is missing {missing}")
        wrong = [f.name for f in fields(cls) if f.type == "str" and not isinstance(data.get(f.name, ""), str)]
        wrong += [f.name for f in fields(cls) if f.type == "int" and type(data.get(f.name, 0)) is not int]
        if wrong:
            raise BundleError(f"{origin}: side-car fields {wrong} have the wrong type (strings / integers expected)")
        return cls(**data)



def sidecar_path(plan_path: Path) -> Path:
    return Path(plan_path).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(plan_path: str | Path) -> PlanSidecar:
    """Read the side-car of ``plan_path``; a plan without one is refused (nothing says what it was built for)."""
    path = sidecar_path(Path(plan_path))
    if not path.is_file():
        raise BundleError(
            f"{plan_path} has no side-car {path.name}: it cannot be checked against this GPU and bundle. "
            "Rebuild it with: edge-inspector build-engine"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is unreadable or not valid JSON: {exc}") from exc
    return PlanSidecar.from_dict(data, str(path))


def write_sidecar(plan_path: str | Path, sidecar: PlanSidecar) -> Path:
    path = sidecar_path(Path(plan_path))
    path.write_text(sidecar.to_json())
    return path


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe in file names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return slug or "gpu"


def default_plan_name(gpu_name: str, tensorrt_version: str) -> str:
    return f"{gpu_slug(gpu_name)}-trt{tensorrt_version}{PLAN_SUFFIX}"


def list_plans(plans_dir: str | Path) -> list[tuple[Path, PlanSidecar | None]]:
    """Every ``*.plan`` in ``plans_dir`` with its side-car (None when missing or unreadable), newest first."""
    plans_dir = Path(plans_dir)
    if not plans_dir.is_dir():
        return []
    found: list[tuple[Path, PlanSidecar | None]] = []
    for plan in sorted(plans_dir.glob(f"*{PLAN_SUFFIX}")):
        try:
            found.append((plan, read_sidecar(plan)))
        except BundleError:
            found.append((plan, None))
    found.sort(key=lambda item: item[1].created if item[1] else "", reverse=True)
    return found


def plan_candidates(bundle_dir: str | Path, explicit: str | Path | None = None) -> list[tuple[Path, PlanSidecar | None]]:
    """The plans the backend choice may use: ``explicit`` alone when given (a relative path is tried from the
    working directory, then from the bundle's ``plans/``), else every plan in ``<bundle>/plans``."""
    if explicit is None:
        return list_plans(Path(bundle_dir) / "plans")
    path = Path(explicit)
    if not path.is_absolute() and not path.exists() and (Path(bundle_dir) / "plans" / path).exists():
        path = Path(bundle_dir) / "plans" / path
    if not path.is_file():
        raise BundleError(f"TensorRT plan not found: {explicit} (engine.plan)")
    try:
        return [(path, read_sidecar(path))]
    except BundleError:
        return [(path, None)]


def rebuild_command(bundle_dir: str | Path | None) -> str:
    return f"edge-inspector build-engine --model {bundle_dir if bundle_dir else '<bundle>'}"


def plan_differences(sidecar: PlanSidecar, device: DeviceInfo, onnx_sha256: str) -> list[str]:
    """What differs between what the plan was built for and this machine + bundle (empty = it fits)."""
    diffs = []
    if sidecar.gpu_name != device.gpu_name:
        diffs.append(f"GPU: plan built on '{sidecar.gpu_name}', this machine has '{device.gpu_name}'")
    if sidecar.module_model != device.module_model:
        diffs.append(f"board: plan built on '{sidecar.module_model}', this one is '{device.module_model}'")
    if sidecar.compute_capability != device.compute_capability:
        diffs.append(
            f"compute capability: plan {sidecar.compute_capability}, this GPU {device.compute_capability}"
        )
    if sidecar.sm_count != device.sm_count:
        diffs.append(f"SM count: plan built on {sidecar.sm_count} SMs, this GPU has {device.sm_count}")
    here_mb = device.total_memory_mb or 0
    if abs(here_mb - sidecar.total_memory_mb) > MEMORY_TOLERANCE * max(sidecar.total_memory_mb, 1):
        diffs.append(f"GPU memory: plan built with {sidecar.total_memory_mb} MiB, this GPU has {here_mb} MiB")
    if sidecar.tensorrt_version != device.tensorrt_version:
        diffs.append(
            f"TensorRT: plan built with {sidecar.tensorrt_version}, installed {device.tensorrt_version}"
        )
    if sidecar.onnx_sha256 != onnx_sha256:
        diffs.append(
            f"ONNX graph: plan built from sha256 {sidecar.onnx_sha256[:12]}…, bundle has {onnx_sha256[:12]}…"
        )
    return diffs


def check_plan_matches(
    sidecar: PlanSidecar,
    device: DeviceInfo,
    trt_version: str,
    onnx_sha256: str,
    bundle_dir: str | Path | None = None,
) -> None:
    """Raise PlanMismatchError naming every difference and the command that rebuilds the plan.

    Args:
        device: this machine's GPU (its ``tensorrt_version`` is ignored in favour of ``trt_version``).
        trt_version: the TensorRT version that would deserialise the plan.
        onnx_sha256: sha256 of the bundle's ONNX graph.
        bundle_dir: used only to print a ready-to-run rebuild command.
    """
    here = dataclasses.replace(device, tensorrt_version=trt_version)
    diffs = plan_differences(sidecar, here, onnx_sha256)
    if diffs:
        raise PlanMismatchError(
            f"TensorRT plan {sidecar.plan_file} does not fit this machine and bundle:\n  - "
            + "\n  - ".join(diffs)
            + f"\nRebuild it on this device with: {rebuild_command(bundle_dir)}"
        )


@dataclass(frozen=True)
class BackendChoice:
    backend: Literal["onnxruntime", "tensorrt"]
    plan: Path | None
    reason: str
    """One sentence for the log and the status topic: why this backend."""


def choose_backend(
    requested: Literal["auto", "onnxruntime", "tensorrt"],
    plan_candidates: list[tuple[Path, PlanSidecar | None]],
    device_info: DeviceInfo,
    onnx_sha256: str,
    bundle_dir: str | Path | None = None,
) -> BackendChoice:
    """Pick the engine backend. Pure: the caller probes the machine and lists the plans.

    'auto' takes the newest plan that fits this GPU, TensorRT version and ONNX graph, else ONNX Runtime (with the
    reason). 'tensorrt' without a fitting plan raises: the person asked for the GPU and must learn why not.

    Args:
        plan_candidates: ``(plan path, side-car or None)`` newest first, as ``list_plans`` returns them.
        device_info: this machine (``DeviceInfo()`` when nothing GPU-related is available).
        onnx_sha256: sha256 of the bundle's ONNX graph.
    """
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", None, "ONNX Runtime requested")
    if requested not in ("auto", "tensorrt"):
        raise EngineError(f"unknown backend {requested!r}: use auto, onnxruntime or tensorrt")
    missing = device_info.unavailable_reason()
    rejected: list[str] = []
    if missing is None:
        for plan, sidecar in plan_candidates:
            if sidecar is None:
                rejected.append(f"{plan.name}: no readable side-car")
                continue
            diffs = plan_differences(sidecar, device_info, onnx_sha256)
            if not diffs:
                return BackendChoice("tensorrt", plan, f"plan {plan.name} matches this GPU and TensorRT version")
            rejected.append(f"{plan.name}: " + "; ".join(diffs))
    if missing is not None:
        why = missing
    elif not plan_candidates:
        why = f"no TensorRT plan in the bundle (build one with: {rebuild_command(bundle_dir)})"
    else:
        why = "no plan fits: " + " | ".join(rejected) + f" (rebuild with: {rebuild_command(bundle_dir)})"
    if requested == "tensorrt":
        if missing == "TensorRT not installed":
            raise MissingDependencyError.for_gpu("tensorrt")
        if missing is not None:
            raise EngineError(f"backend 'tensorrt' requested but {missing}; use engine.backend=auto or onnxruntime")
        raise PlanMismatchError(f"backend 'tensorrt' requested but {why}")
    return BackendChoice("onnxruntime", None, f"ONNX Runtime: {why}")
