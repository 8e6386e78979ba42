"""Evaluate a model bundle (through ONNX Runtime, what ships) or a torch scorer on an MVTec-layout test split.

The image score is reported for the three aggregations side by side (mean as in the paper, max, top-k mean), all
computed from the same anomaly map; the bundle's own aggregation comes first and is the one thresholds and F1 use.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_inspector.data.folders import Category
from edge_inspector.engines.latency import LatencyStats
from edge_inspector.engines.records import machine
from edge_inspector.training.metrics import evaluate_scores, mean_over_types
from edge_inspector.model.scorer import AGGREGATIONS, aggregate, run_scorer


@dataclass
class Predictions:
    """Raw model outputs on a test set."""

    maps: np.ndarray
    """(N, H, W) float32 anomaly maps at the model input size."""
    scores: np.ndarray
    """(N,) image scores as the model computes them (its own aggregation)."""
    engine: str
    latency_ms: list[float] = field(default_factory=list)
    """Per-image inference time (single image, after warm-up), when measured."""
    engine_info: dict[str, str] = field(default_factory=dict)


def predict_with_engine(engine: Any, images: np.ndarray, progress: bool = False, warmup: int = 2) -> Predictions:
    """Run images one by one through a run-time engine (``engines.base.Engine``), timing each call."""
    height, width = images.shape[1:3]
    maps = np.empty((len(images), height, width), np.float32)
    scores = np.empty(len(images), np.float32)
    latency = []
    for _ in range(min(warmup, len(images))):
        engine.infer(images[0])
    for i, image in enumerate(tqdm(images, desc="inference", disable=not progress, leave=False)):
        start = time.perf_counter()
        out = engine.infer(image)
        latency.append((time.perf_counter() - start) * 1e3)
        maps[i], scores[i] = out.anomaly_map, out.score
    return Predictions(maps, scores, engine.name, latency, engine.describe())


def predict_with_torch(scorer: Any, images: np.ndarray, batch_size: int = 8, progress: bool = False) -> Predictions:
    """Run images through a torch ``AnomalyScorer`` in batches (no per-image latency)."""
    maps, scores = run_scorer(scorer, images, batch_size, progress, "inference")
    return Predictions(maps, scores, "torch")


def evaluate_predictions(
    predictions: Predictions,
    category: Category,
    masks: np.ndarray | None,
    aggregation: str,
    topk_fraction: float,
    image_threshold: float | None,
    pixel_threshold: float | None,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """Metrics overall and per defect type, plus what produced them, as one JSON-ready dict (image figures only
    when ``masks`` is None: a set with image-level labels)."""
    image_scores = {aggregation: predictions.scores}
    for name in AGGREGATIONS:
        if name != aggregation:
            image_scores[name] = aggregate(predictions.maps, name, topk_fraction)
    defects = [sample.defect for sample in category.test]
    metrics = evaluate_scores(
        image_scores, defects, predictions.maps, masks, image_threshold, pixel_threshold
    )
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine("torch", "onnxruntime"),
        "dataset": {"name": category.name, "root": str(category.root), "n_test": len(category.test),
                    "defect_types": category.defect_types},
        "model": model_info,
        "engine": predictions.engine,
        "engine_info": predictions.engine_info,
        "image_size": list(predictions.maps.shape[1:]),
        "aggregation": aggregation,
        "topk_fraction": topk_fraction,
        "thresholds": {"image": image_threshold, "pixel": pixel_threshold},
        "latency_ms": LatencyStats.of(predictions.latency_ms).to_dict() if predictions.latency_ms else {},
        "metrics": metrics,
        "mean_over_types": mean_over_types(metrics),
    }
