"""``edge-inspector eval --model <bundle dir or checkpoint> --data <category> [--out dir]``.

A bundle is evaluated through ONNX Runtime by default: that is the graph that ships, so its numbers are the honest
ones. A training checkpoint (.pt) runs in torch; its normal statistics and thresholds are rebuilt from the holdout
slice of ``<data>/train/good`` exactly as ``train`` and ``export`` build them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_inspector.cli.export import add_threshold_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model bundle folder, or a training checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="MVTec-layout category folder with test/ and ground_truth/")
    parser.add_argument("--out", default=None, help="result folder (default: runs/eval/<model>-<category>)")
    parser.add_argument("--engine", choices=["onnxruntime", "torch"], default=None,
                        help="default: onnxruntime for a bundle, torch for a checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = every core)")
    parser.add_argument("--overlays", type=int, default=8, help="number of overlay images to write")
    add_threshold_arguments(parser)
    parser.add_argument("--write-thresholds", action="store_true",
                        help="store the F1-optimal image and pixel thresholds on this labelled set in the bundle "
                             "(use a labelled calibration set, not the set you report on)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _bundle_predictions(path: Path, engine_name: str, images, threads: int, progress: bool):
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.config import EngineSettings
    from edge_inspector.engines.ort import OrtEngine
    from edge_inspector.errors import ConfigError
    from edge_inspector.training.evaluate import predict_with_engine

    if engine_name != "onnxruntime":
        raise ConfigError(f"--engine {engine_name} needs a training checkpoint; a bundle runs on onnxruntime")
    bundle = load_bundle(path)
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=threads))
    try:
        predictions = predict_with_engine(engine, images, progress)
    finally:
        engine.close()
    m = bundle.manifest
    info = {"path": str(path), "model_id": m.model_id, "precision": m.quantization.precision,
            "head": m.score.head,
            **({"preset": m.training.preset, "attention": m.training.attention} if m.training else {})}
    return predictions, m.score.aggregation, m.score.topk_fraction, m.thresholds.image, m.thresholds.pixel, info


def _checkpoint_predictions(path: Path, category, args: argparse.Namespace, progress: bool):
    import torch

    from edge_inspector.data.folders import load_images, load_test_set
    from edge_inspector.cli.export import holdout_split
    from edge_inspector.export.onnx_export import ThresholdPolicy, thresholds_from_normal
    from edge_inspector.training.evaluate import predict_with_torch
    from edge_inspector.training.heads import build_scorer
    from edge_inspector.training.trainer import load_checkpoint

    model, preset = load_checkpoint(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = preset.model
    _, holdout_paths = holdout_split(category, preset)
    holdout = load_images(holdout_paths, spec.width, spec.height, spec.resize, progress=progress, desc="holdout")
    scorer, stats, choice = build_scorer(model, preset, holdout, progress=progress)
    thresholds = thresholds_from_normal(stats, ThresholdPolicy(args.target_frr, args.pixel_fpr))
    images, masks = load_test_set(category, spec.width, spec.height, spec.resize, progress=progress)
    predictions = predict_with_torch(scorer, images, progress=progress)
    info = {"path": str(path), "preset": preset.name, "attention": spec.attention, "head": choice.head}
    return (predictions, preset.score.aggregation, preset.score.topk_fraction, thresholds.image, thresholds.pixel,
            info), images, masks


def run_eval(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Evaluate as the command does; returns the result dict and the folder it was written to."""
    from edge_inspector.bundle.store import read_manifest
    from edge_inspector.data.folders import load_test_set, scan_category
    from edge_inspector.training.evaluate import evaluate_predictions
    from edge_inspector.training.report import write_overlays, write_result

    from edge_inspector.errors import BundleError

    model_path = Path(args.model)
    if not model_path.exists():
        raise BundleError(f"--model {model_path}: no such bundle folder or checkpoint file")
    category = scan_category(args.data, require_test=True)
    progress = not args.no_progress
    is_bundle = model_path.is_dir()
    engine_name = args.engine or ("onnxruntime" if is_bundle else "torch")
    if is_bundle:
        manifest = read_manifest(model_path)
        images, masks = load_test_set(category, manifest.input.width, manifest.input.height, manifest.input.resize,
                                      manifest.input.pad_value, progress=progress)
        outputs = _bundle_predictions(model_path, engine_name, images, args.threads, progress)
    else:
        if engine_name != "torch":
            from edge_inspector.errors import ConfigError

            raise ConfigError(f"--engine {engine_name} needs a bundle; export the checkpoint first (edge-inspector export)")
        outputs, images, masks = _checkpoint_predictions(model_path, category, args, progress)
    predictions, aggregation, topk_fraction, image_thr, pixel_thr, info = outputs
    result = evaluate_predictions(predictions, category, masks, aggregation, topk_fraction, image_thr, pixel_thr, info)
    result["command"] = "edge-inspector eval " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
        ("model", args.model), ("data", args.data)))
    default_name = f"{info.get('model_id', model_path.stem)}-{category.name}"
    out = Path(args.out) if args.out else Path("runs") / "eval" / default_name
    if args.write_thresholds:
        result["written_thresholds"] = _write_f1_thresholds(model_path, is_bundle, category, predictions, masks)
    write_result(out, result)
    if args.overlays:
        write_overlays(out, category, images, predictions.maps, masks, predictions.scores, pixel_thr, args.overlays)
    return result, out


def _write_f1_thresholds(model_path: Path, is_bundle: bool, category, predictions, masks) -> dict[str, float]:
    """F1-optimal thresholds on this labelled set, written into the bundle's manifest."""
    import numpy as np

    from edge_inspector.bundle.store import load_bundle, save_manifest
    from edge_inspector.bundle.thresholds import f1_threshold
    from edge_inspector.errors import ConfigError

    if not is_bundle:
        raise ConfigError("--write-thresholds needs a bundle folder (a checkpoint has no manifest to write to)")
    labels = np.array([sample.is_anomalous for sample in category.test])
    image_thr, image_f1 = f1_threshold(predictions.scores, labels)
    pixel_thr, pixel_f1 = f1_threshold(predictions.maps, masks)
    bundle = load_bundle(model_path)
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.thresholds.image, manifest.thresholds.image_method = image_thr, "f1"
    manifest.thresholds.pixel, manifest.thresholds.pixel_method = pixel_thr, "f1"
    manifest.thresholds.target_false_reject_rate = None
    save_manifest(model_path, manifest)
    print(f"thresholds  image {image_thr:.4g} (F1 {image_f1:.3f}), pixel {pixel_thr:.4g} (F1 {pixel_f1:.3f}) "
          f"written to {model_path}")
    return {"image": image_thr, "image_f1": image_f1, "pixel": pixel_thr, "pixel_f1": pixel_f1}


def main(args: argparse.Namespace) -> int:
    from edge_inspector.training.report import result_table

    result, out = run_eval(args)
    print(result_table(result))
    print(f"written to  {out}")
    return 0
