"""A built TensorRT plan against ONNX Runtime: parity on the bundle's calibration images, then both engines timed.

Run on the device that runs the plan, after ``trt_build.build_engine``. A plan whose scores drift beyond the
manifest's ``parity`` tolerances is removed (with its side-car), so the line cannot pick it up; a plan that passes
gets the parity report and the latencies in its side-car.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_inspector.bundle.plans import read_sidecar, sidecar_path, write_sidecar
from edge_inspector.bundle.store import Bundle
from edge_inspector.engines.latency import Latency, engine_runner, interleaved_latency
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.parity import ParityReport, compare_engines
from edge_inspector.errors import BundleError


@dataclass
class PlanCheck:
    parity: ParityReport
    latency: Latency | None
    """TensorRT and ONNX Runtime timed interleaved on one image (``engines.latency``); None when parity failed."""

    def latency_record(self) -> dict:
        """Each engine's latency (ms: n, mean, p50...) and the median same-cycle ratio; empty when not timed."""
        if self.latency is None:
            return {}
        return {"latency": self.latency.stats("tensorrt").to_dict(),
                "onnxruntime_latency": self.latency.stats("onnxruntime").to_dict(),
                "tensorrt_over_onnxruntime": self.latency.ratio("tensorrt", reference="onnxruntime")}

    def record(self) -> dict:
        """What the plan's side-car keeps: the parity report and the latencies."""
        return {**self.parity.to_dict(), **self.latency_record()}

    def summary(self) -> str:
        return self.parity.summary() + ("\n" + self.latency.summary() if self.latency is not None else "")


def check_plan(bundle: Bundle, plan_path: Path, latency_runs: int, progress: bool = True) -> PlanCheck:
    """Compare the plan with ONNX Runtime on the bundle's calibration images; when it passes, time both engines
    over ``latency_runs`` interleaved cycles.

    Raises:
        BundleError: the bundle ships no calibration images.
        EngineError: either engine fails on an image.
    """
    from edge_inspector.engines.trt_run import TrtEngine  # imports tensorrt: only here

    images = bundle.calibration_images()
    if not len(images):
        raise BundleError(
            f"{bundle.path} ships no calibration images, so the plan cannot be checked against ONNX Runtime; "
            "re-export the bundle with calibration images, or pass --skip-parity"
        )
    trt_engine, ort_engine = TrtEngine(bundle, plan_path), OrtEngine(bundle)
    try:
        report = compare_engines(trt_engine, ort_engine, images, bundle.manifest.thresholds.image,
                                 bundle.manifest.parity, progress=progress)
        latency = None
        if report.passed:
            runners = {"tensorrt": engine_runner(trt_engine, images[:1]),
                       "onnxruntime": engine_runner(ort_engine, images[:1])}
            latency = interleaved_latency(runners, latency_runs, warmup=5, progress="latency" if progress else None)
    finally:
        trt_engine.close()
        ort_engine.close()
    return PlanCheck(report, latency)


def keep_or_remove(plan_path: Path, check: PlanCheck) -> bool:
    """Record a passing check in the plan's side-car, or remove a failing plan and its side-car; True when kept."""
    if not check.parity.passed:
        for path in (plan_path, sidecar_path(plan_path)):
            path.unlink(missing_ok=True)
        return False
    sidecar = read_sidecar(plan_path)
    sidecar.parity = check.record()
    write_sidecar(plan_path, sidecar)
    return True
