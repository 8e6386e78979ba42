"""Parity of a candidate engine (TensorRT, an FP16 graph) against a reference (ONNX Runtime), and latency summaries.

Pure numpy over two ``Engine`` objects, so the same code judges a TensorRT plan on a Jetson and an FP16 graph in
ONNX Runtime on a CPU-only test machine.

Score drift of one image is ``|candidate - reference| / max(|reference|, 1e-3 * threshold)``: relative, as the
manifest's ``parity.score_rtol`` is, with a floor so a near-zero reference score cannot blow it up. Verdicts are
compared at the manifest's raw image threshold (``score >= threshold`` is FAIL). An image whose reference score
lies within ``score_rtol`` of the threshold is *borderline*: a drift the manifest allows may flip it, so it is
reported but left out of the agreement that is judged. This matters in practice: the calibration images are the
held-back good images the threshold was fitted on, so the top one often sits right at the threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.engines.base import Engine
from edge_inspector.errors import EngineError


@dataclass
class ParityReport:
    candidate: str
    reference: str
    threshold: float
    tolerances: ParitySpec
    reference_scores: np.ndarray
    candidate_scores: np.ndarray
    map_max_abs_diff: float
    """Largest |candidate - reference| over every anomaly-map pixel of every image."""
    map_rel_diff: float
    """map_max_abs_diff divided by the largest reference map value (0 when that is 0)."""
    failures: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return int(len(self.reference_scores))

    @property
    def score_drift(self) -> np.ndarray:
        floor = max(1e-3 * self.threshold, 1e-12)
        return np.abs(self.candidate_scores - self.reference_scores) / np.maximum(np.abs(self.reference_scores), floor)

    @property
    def borderline(self) -> np.ndarray:
        """Images whose reference score is within the allowed drift of the threshold."""
        return np.abs(self.reference_scores - self.threshold) <= self.tolerances.score_rtol * abs(self.threshold)

    @property
    def verdict_agreement(self) -> float:
        """Share of non-borderline images on which both engines give the same verdict (1.0 when there are none)."""
        agree = (self.candidate_scores >= self.threshold) == (self.reference_scores >= self.threshold)
        decisive = agree[~self.borderline]
        return float(decisive.mean()) if len(decisive) else 1.0

    @property
    def borderline_flips(self) -> int:
        flips = (self.candidate_scores >= self.threshold) != (self.reference_scores >= self.threshold)
        return int((flips & self.borderline).sum())

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        drift = self.score_drift
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "images": self.n_images,
            "threshold": self.threshold,
            "max_score_drift": float(drift.max()) if len(drift) else 0.0,
            "mean_score_drift": float(drift.mean()) if len(drift) else 0.0,
            "score_rtol": self.tolerances.score_rtol,
            "verdict_agreement": self.verdict_agreement,
            "verdict_agreement_required": self.tolerances.verdict_agreement,
            "borderline_images": int(self.borderline.sum()),
            "borderline_flips": self.borderline_flips,
            "map_max_abs_diff": self.map_max_abs_diff,
            "map_rel_diff": self.map_rel_diff,
            "passed": self.passed,
            "failures": list(self.failures),
        }

    def summary(self) -> str:
        d = self.to_dict()
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"parity {verdict}: {d['candidate']} vs {d['reference']} on {d['images']} calibration images",
            f"  score drift  max {d['max_score_drift']:.2e}  mean {d['mean_score_drift']:.2e}  "
            f"(tolerance {d['score_rtol']:.2e})",
            f"  verdicts     {d['verdict_agreement']:.1%} agree at threshold {d['threshold']:.4g} "
            f"(required {d['verdict_agreement_required']:.1%}; {d['borderline_images']} borderline image(s) within "
            f"the tolerance of the threshold not judged, {d['borderline_flips']} of them flipped)",
            f"  anomaly map  max |diff| {d['map_max_abs_diff']:.3g} ({d['map_rel_diff']:.2%} of the reference peak)",
        ]
        lines += [f"  ! {failure}" for failure in self.failures]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if self.failures:
            raise EngineError(f"{self.candidate} does not match {self.reference}:\n{self.summary()}")


def _label(engine: Engine) -> str:
    info = engine.describe()
    return f"{info.get('backend', engine.name)} {info.get('version', '')}".strip()


def compare_engines(
    candidate: Engine,
    reference: Engine,
    images: np.ndarray,
    threshold: float,
    tolerances: ParitySpec,
    progress: bool = False,
) -> ParityReport:
    """Run both engines on ``images`` (N, H, W, 3) uint8 and judge the candidate by ``tolerances``.

    Raises:
        EngineError: no images, or either engine fails on one (the error names which).
    """
    if images.ndim != 4 or not len(images):
        raise EngineError(f"parity needs at least one (H, W, 3) image, got an array of shape {images.shape}")
    ref_scores, cand_scores = [], []
    max_abs, ref_peak = 0.0, 0.0
    for image in tqdm(images, desc="parity", unit="img", disable=not progress, leave=False):
        ref = reference.infer(image)
        cand = candidate.infer(image)
        if cand.anomaly_map.shape != ref.anomaly_map.shape:
            raise EngineError(
                f"{_label(candidate)} returned an anomaly map of shape {cand.anomaly_map.shape}, "
                f"{_label(reference)} {ref.anomaly_map.shape}"
            )
        diff = np.abs(cand.anomaly_map.astype(np.float64) - ref.anomaly_map.astype(np.float64))
        max_abs = max(max_abs, float(diff.max()) if np.isfinite(diff).all() else float("inf"))
        ref_peak = max(ref_peak, float(np.abs(ref.anomaly_map).max()))
        ref_scores.append(ref.score)
        cand_scores.append(cand.score)
    report = ParityReport(
        candidate=_label(candidate),
        reference=_label(reference),
        threshold=float(threshold),
        tolerances=tolerances,
        reference_scores=np.asarray(ref_scores, np.float64),
        candidate_scores=np.asarray(cand_scores, np.float64),
        map_max_abs_diff=max_abs,
        map_rel_diff=max_abs / ref_peak if ref_peak > 0 else 0.0,
    )
    drift = report.score_drift
    if not np.isfinite(report.candidate_scores).all():
        report.failures.append("the candidate produced non-finite scores (FP16 overflow?)")
    elif drift.max() > tolerances.score_rtol:
        worst = int(drift.argmax())
        report.failures.append(
            f"score drift {drift.max():.2e} exceeds the manifest tolerance {tolerances.score_rtol:.2e} "
            f"(image {worst}: {report.candidate_scores[worst]:.6g} vs {report.reference_scores[worst]:.6g})"
        )
    if report.verdict_agreement < tolerances.verdict_agreement:
        report.failures.append(
            f"verdicts agree on {report.verdict_agreement:.1%} of the non-borderline images, the manifest requires "
            f"{tolerances.verdict_agreement:.1%}"
        )
    return report


@dataclass(frozen=True)
class LatencySummary:
    engine: str
    runs: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict:
        return {
            "engine": self.engine, "runs": self.runs, "mean_ms": self.mean_ms, "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
        }

    def summary(self) -> str:
        return (
            f"latency {self.engine}: p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms  mean {self.mean_ms:.2f} ms  "
            f"({self.runs} runs, one image each, copies included)"
        )


def measure_latency(engine: Engine, image: np.ndarray, runs: int = 100, warmup: int = 5) -> LatencySummary:
    """Time ``engine.infer(image)`` end to end (host copies included) after ``warmup`` untimed runs."""
    if runs < 1:
        raise EngineError("latency needs at least one timed run")
    for _ in range(warmup):
        engine.infer(image)
    times = np.empty(runs, np.float64)
    for i in range(runs):
        start = time.perf_counter()
        engine.infer(image)
        times[i] = (time.perf_counter() - start) * 1e3
    return LatencySummary(
        engine=_label(engine),
        runs=runs,
        mean_ms=float(times.mean()),
        p50_ms=float(np.percentile(times, 50)),
        p99_ms=float(np.percentile(times, 99)),
        min_ms=float(times.min()),
        max_ms=float(times.max()),
    )
