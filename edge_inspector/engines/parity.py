"""Parity of a candidate's outputs against a reference's: the one comparison every parity check in the project uses.

Pure numpy over two ``Outputs`` (anomaly maps and scores for the same images), so the same code judges a TensorRT
plan against ONNX Runtime on a Jetson, an FP16 graph against the original on a CPU-only test machine, and (through
the torch adapter in ``export.parity``) an exported graph against the torch model it came from.

Score drift of one image is ``|candidate - reference| / max(|reference|, floor)``: relative, as the manifest's
``parity.score_rtol`` is, with a floor of ``1e-3 * threshold`` (when there is one) so a near-zero reference score
cannot blow it up. The anomaly maps are compared per image, relative to that image's reference peak. Verdicts are
compared at the raw image threshold (``score >= threshold`` is FAIL). An image whose reference score lies within
``score_rtol`` of the threshold is *borderline*: a drift the tolerance allows may flip it, so it is reported but left
out of the agreement that is judged. This matters in practice: the calibration images are the held-back good images
the threshold was fitted on, so the top one often sits right at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from edge_inspector.bundle.manifest import ParitySpec
from edge_inspector.engines.base import Engine
from edge_inspector.errors import EngineError

SCORE_FLOOR = 1e-12
"""Smallest denominator of a relative difference (no threshold to scale the floor with)."""


@dataclass
class Outputs:
    """One side's outputs for the same N images."""

    label: str
    """Who produced them, e.g. 'onnxruntime 1.23.0' or 'torch'."""
    maps: np.ndarray
    """(N, H, W) anomaly maps."""
    scores: np.ndarray
    """(N,) image scores."""


@dataclass
class ParityReport:
    candidate: str
    reference: str
    threshold: float | None
    """Raw image threshold the verdicts are compared at; None: verdicts not compared."""
    tolerances: ParitySpec | None
    """None: figures only, nothing judged."""
    reference_scores: np.ndarray
    candidate_scores: np.ndarray
    map_abs_diff: np.ndarray
    """Per image: largest |candidate - reference| over its anomaly-map pixels."""
    map_peak: np.ndarray
    """Per image: largest |reference| anomaly-map value."""
    map_rtol: float | None = None
    """Largest allowed ``map_rel_diff``; None: maps reported, not judged."""
    failures: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return int(len(self.reference_scores))

    @property
    def score_drift(self) -> np.ndarray:
        floor = max(1e-3 * abs(self.threshold), SCORE_FLOOR) if self.threshold is not None else SCORE_FLOOR
        return np.abs(self.candidate_scores - self.reference_scores) / np.maximum(np.abs(self.reference_scores), floor)

    @property
    def max_score_drift(self) -> float:
        return float(self.score_drift.max()) if self.n_images else 0.0

    @property
    def map_max_abs_diff(self) -> float:
        """Largest |candidate - reference| over every anomaly-map pixel of every image."""
        return float(self.map_abs_diff.max()) if self.n_images else 0.0

    @property
    def map_rel_diff(self) -> float:
        """Largest over the images of the map difference relative to that image's reference peak."""
        if not self.n_images:
            return 0.0
        return float((self.map_abs_diff / np.maximum(self.map_peak, SCORE_FLOOR)).max())

    @property
    def borderline(self) -> np.ndarray:
        """Images whose reference score is within the allowed drift of the threshold."""
        if self.threshold is None or self.tolerances is None:
            return np.zeros(self.n_images, bool)
        return np.abs(self.reference_scores - self.threshold) <= self.tolerances.score_rtol * abs(self.threshold)

    def _flips(self) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(self.n_images, bool)
        return (self.candidate_scores >= self.threshold) != (self.reference_scores >= self.threshold)

    @property
    def verdict_agreement(self) -> float:
        """Share of non-borderline images on which both give the same verdict (1.0 when there are none)."""
        decisive = ~self._flips()[~self.borderline]
        return float(decisive.mean()) if len(decisive) else 1.0

    @property
    def borderline_flips(self) -> int:
        return int((self._flips() & self.borderline).sum())

    @property
    def passed(self) -> bool:
        return not self.failures

    def judge(self) -> ParityReport:
        """Fill ``failures`` from the tolerances (none without tolerances); returns ``self``."""
        drift = self.score_drift
        self.failures = []
        if self.tolerances is None:
            return self
        if not np.isfinite(self.candidate_scores).all():
            self.failures.append("the candidate produced non-finite scores (FP16 overflow?)")
        elif self.n_images and drift.max() > self.tolerances.score_rtol:
            worst = int(drift.argmax())
            self.failures.append(
                f"score drift {drift.max():.2e} exceeds the tolerance {self.tolerances.score_rtol:.2e} "
                f"(image {worst}: {self.candidate_scores[worst]:.6g} vs {self.reference_scores[worst]:.6g})"
            )
        if self.verdict_agreement < self.tolerances.verdict_agreement:
            self.failures.append(
                f"verdicts agree on {self.verdict_agreement:.1%} of the non-borderline images, the tolerance "
                f"requires {self.tolerances.verdict_agreement:.1%}"
            )
        if self.map_rtol is not None and not self.map_rel_diff <= self.map_rtol:
            self.failures.append(f"anomaly maps differ by {self.map_rel_diff:.2e} of the reference peak, the "
                                 f"tolerance is {self.map_rtol:.2e}")
        return self

    def to_dict(self) -> dict:
        drift = self.score_drift
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "images": self.n_images,
            "threshold": self.threshold,
            "max_score_drift": self.max_score_drift,
            "mean_score_drift": float(drift.mean()) if len(drift) else 0.0,
            "score_rtol": self.tolerances.score_rtol if self.tolerances else None,
            "verdict_agreement": self.verdict_agreement,
            "verdict_agreement_required": self.tolerances.verdict_agreement if self.tolerances else None,
            "borderline_images": int(self.borderline.sum()),
            "borderline_flips": self.borderline_flips,
            "map_max_abs_diff": self.map_max_abs_diff,
            "map_rel_diff": self.map_rel_diff,
            "map_rtol": self.map_rtol,
            "passed": self.passed,
            "failures": list(self.failures),
        }

    def summary(self) -> str:
        d = self.to_dict()
        verdict = "figures" if self.tolerances is None else "PASS" if self.passed else "FAIL"
        tolerance = f"  (tolerance {d['score_rtol']:.2e})" if self.tolerances else ""
        lines = [
            f"parity {verdict}: {d['candidate']} vs {d['reference']} on {d['images']} images",
            f"  score drift  max {d['max_score_drift']:.2e}  mean {d['mean_score_drift']:.2e}{tolerance}",
        ]
        if self.threshold is not None and self.tolerances is not None:
            lines.append(
                f"  verdicts     {d['verdict_agreement']:.1%} agree at threshold {d['threshold']:.4g} "
                f"(required {d['verdict_agreement_required']:.1%}; {d['borderline_images']} borderline image(s) "
                f"within the tolerance of the threshold not judged, {d['borderline_flips']} of them flipped)")
        lines.append(f"  anomaly map  max |diff| {d['map_max_abs_diff']:.3g} (up to {d['map_rel_diff']:.2%} of an "
                     "image's reference peak)")
        lines += [f"  ! {failure}" for failure in self.failures]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if self.failures:
            raise EngineError(f"{self.candidate} does not match {self.reference}:\n{self.summary()}")


def compare_outputs(
    candidate: Outputs,
    reference: Outputs,
    threshold: float | None,
    tolerances: ParitySpec | None,
    map_rtol: float | None = None,
) -> ParityReport:
    """Compare two sides' outputs for the same images and judge the candidate by the tolerances.

    Args:
        candidate: the side under test.
        reference: the side it must match.
        threshold: raw image threshold for the verdicts (and the score-drift floor); None: no verdicts.
        tolerances: score drift and verdict agreement allowed; None: figures only, nothing judged.
        map_rtol: largest map difference allowed, relative to each image's reference peak; None: not judged.

    Raises:
        EngineError: no images, or the two sides' maps or scores do not line up.
    """
    if not len(reference.scores):
        raise EngineError("parity needs at least one image")
    if candidate.maps.shape != reference.maps.shape or candidate.scores.shape != reference.scores.shape:
        raise EngineError(
            f"{candidate.label} returned anomaly maps {candidate.maps.shape} and scores {candidate.scores.shape}, "
            f"{reference.label} {reference.maps.shape} and {reference.scores.shape}"
        )
    n = len(reference.scores)
    ref_maps = reference.maps.reshape(n, -1).astype(np.float64)
    diff = np.abs(candidate.maps.reshape(n, -1).astype(np.float64) - ref_maps)
    # a non-finite map difference counts as infinite, not as NaN (which would compare False with every tolerance)
    abs_diff = np.where(np.isfinite(diff).all(axis=1), diff.max(axis=1, initial=0.0), np.inf)
    return ParityReport(
        candidate=candidate.label,
        reference=reference.label,
        threshold=None if threshold is None else float(threshold),
        tolerances=tolerances,
        reference_scores=np.asarray(reference.scores, np.float64).reshape(-1),
        candidate_scores=np.asarray(candidate.scores, np.float64).reshape(-1),
        map_abs_diff=abs_diff,
        map_peak=np.abs(ref_maps).max(axis=1, initial=0.0),
        map_rtol=map_rtol,
    ).judge()


def engine_label(engine: Engine) -> str:
    info = engine.describe()
    return f"{info.get('backend', engine.name)} {info.get('version', '')}".strip()


def engine_outputs(engine: Engine, images: np.ndarray, progress: bool = False) -> Outputs:
    """Run ``images`` (N, H, W, 3) uint8 through ``engine`` one by one.

    Raises:
        EngineError: no images, or the engine fails on one.
    """
    if images.ndim != 4 or not len(images):
        raise EngineError(f"parity needs at least one (H, W, 3) image, got an array of shape {images.shape}")
    maps, scores = [], []
    for image in tqdm(images, desc=f"parity {engine.name}", unit="img", disable=not progress, leave=False):
        out = engine.infer(image)
        maps.append(out.anomaly_map)
        scores.append(out.score)
    if len({m.shape for m in maps}) > 1:
        raise EngineError(f"{engine_label(engine)} returned anomaly maps of different shapes")
    return Outputs(engine_label(engine), np.stack(maps), np.asarray(scores, np.float64))


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
    return compare_outputs(engine_outputs(candidate, images, progress), engine_outputs(reference, images, progress),
                           threshold, tolerances)
