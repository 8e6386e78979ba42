"""Train: good images -> a trained HaloAE -> an FP32 model bundle.

Fits HaloAE on ``train/good`` minus a seeded holdout slice, takes normal statistics and thresholds from that
holdout, exports the bundle (ONNX + manifest + calibration images) and checks ONNX Runtime against torch.
Checkpoints go to a work folder beside the bundle (not into it: the bundle is what ships); an interrupted run
resumes from the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_inspector.bundle.manifest import InputSizeRecord
from edge_inspector.bundle.store import Bundle
from edge_inspector.bundle.thresholds import ThresholdPolicy
from edge_inspector.data.folders import Category, holdout_split, load_images, scan_category
from edge_inspector.data.groups import NEAR_DUPLICATE_WARN_SHARE, near_duplicates
from edge_inspector.data.image_sizes import read_image_sizes
from edge_inspector.engines.latency import LatencyStats, engine_runner, interleaved_latency
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.model.haloae import build_model
from edge_inspector.model.input_size import InputSizeChoice, choose_input_size, sides_set, with_input_size
from edge_inspector.model.presets import Preset, TrainSpec, load_preset
from edge_inspector.training.trainer import FitReport, fit
from edge_inspector.workflows.export import ExportResult, export_model

log = logging.getLogger(__name__)

LATENCY_RUNS = 30
"""ONNX Runtime runs timed on the written bundle for the summary (a few hundred ms at the default size)."""


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced."""

    fit: FitReport
    """The training run: epochs, steps, last losses, the checkpoint."""
    export: ExportResult
    """The bundle written from the trained model, its parity check and normal statistics."""
    data: str
    """Which images were used: the category, how many fitted and held back, the preset and input size."""
    input_size: InputSizeChoice
    """The model input size, where it came from and why (also in the manifest's ``training.input_size``)."""
    latency: LatencyStats
    """ONNX Runtime latency of one image through the written bundle, on this machine."""

    @property
    def bundle(self) -> Bundle:
        return self.export.bundle

    def summary(self) -> str:
        """What was trained and written, in a few lines for a person."""
        report, size = self.fit, self.input_size
        resumed = f" (resumed at epoch {report.resumed_from_epoch})" if report.resumed_from_epoch else ""
        losses = " ".join(f"{k} {v:.4f}" for k, v in report.losses.items())
        return "\n".join([
            f"data        {self.data}",
            f"trained     {report.epochs_run} of {report.epochs_total} epochs{resumed}, {report.steps} steps in "
            f"{report.duration_s:.0f} s; last epoch {losses}; checkpoint {report.checkpoint}",
            self.export.summary(),
            f"latency     ONNX Runtime on this machine, one {size.width}x{size.height} image: {self.latency.text()}; "
            f"{size.cost:.2f}x the pixels of 256x256 (time grows roughly with the pixels)",
        ])


def default_work_dir(out: str | Path) -> Path:
    """``<out>.work`` beside the bundle: where ``train`` keeps checkpoints and ``calibrate`` looks for them."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def train(
    data: str | Path,
    out: str | Path,
    preset: str = "haloae-lite",
    overrides: Sequence[str] = (),
    *,
    work_dir: str | Path | None = None,
    resume: bool = False,
    thresholds: ThresholdPolicy = ThresholdPolicy(),
    max_images: int | None = None,
    group_by: str | None = None,
    group_gap: int | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train HaloAE on the good images of ``data`` and write the FP32 bundle to ``out``.

    Args:
        data: MVTec-layout category folder (``<cat>/train/good`` ...).
        out: model bundle folder to write.
        preset: built-in preset name (``haloae-lite``, ``haloae-paper``) or a YAML path.
        overrides: ``key=value`` preset overrides, e.g. ``train.epochs=5``.
        work_dir: checkpoints and training state (default ``<out>.work`` beside the bundle).
        resume: continue an interrupted run from its last checkpoint.
        thresholds: target false-reject and pixel false-positive rates on the held-back good images.
        max_images: use only the first N training images (sorted names; for quick checks).
        group_by, group_gap: hold back whole parts (``train.group_by`` / ``train.group_gap``; they win over the
            preset's and are stored in the checkpoint, so export and eval hold back the same images).
        progress: show progress bars.
        announce: called before training starts with the input size chosen, the image size statistics behind it,
            how the holdout was drawn and any warnings, for a person (the command line prints it).

    Raises:
        ConfigError: a malformed override or a bad preset value.
        DataError: the data folder or its holdout split is unusable.
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}: overrides are key=value, e.g. train.epochs=5")
    chosen = load_preset(preset, list(overrides))
    if group_by is not None or group_gap is not None:
        chosen = with_grouping(chosen, group_by, group_gap)
    category = scan_category(data)
    if max_images:
        category = Category(category.root, category.train[:max_images], category.test)
    size = choose_input_size(read_image_sizes(category.train, progress), chosen.model, sides_set(chosen.model))
    chosen = with_input_size(chosen, size)
    log.info("input size", extra=kv(width=size.width, height=size.height, source=size.source,
                                    warnings=len(size.warnings)))
    if announce:
        announce(size.summary())
    spec = chosen.model
    fit_paths, holdout_paths = holdout_split(category, chosen.train)
    guard = holdout_report(fit_paths, holdout_paths, chosen.train)
    if announce:
        announce(guard)
    used = (f"{category.root}: {len(fit_paths)} images to fit, {len(holdout_paths)} held back; "
            f"preset {chosen.name}, {spec.width}x{spec.height}, attention {spec.attention}")
    log.info("training data", extra=kv(data=used))
    images = load_images(fit_paths, spec.width, spec.height, spec.resize, progress=progress, desc="training images")
    torch.manual_seed(chosen.train.seed)  # the auto-encoder's initial weights come from the preset's seed too
    model = build_model(spec)
    work = Path(work_dir) if work_dir else default_work_dir(out)
    report = fit(model, images, chosen.train, work, resume=resume, progress=progress, preset=chosen)
    exported = export_model(model, chosen, category, out, thresholds, epochs=report.epochs_total,
                            duration_s=report.duration_s, input_size=InputSizeRecord(**size.record()),
                            progress=progress)
    return TrainResult(report, exported, used, size, bundle_latency(exported.bundle))


def with_grouping(preset: Preset, group_by: str | None, group_gap: int | None) -> Preset:
    """``preset`` with the holdout drawn by part (``train.group_by`` / ``train.group_gap`` replaced)."""
    settings = {**preset.train.model_dump(), "group_by": group_by, "group_gap": group_gap}
    return preset.model_copy(update={"train": TrainSpec.model_validate(settings)})


def holdout_report(fit_paths: list[Path], holdout_paths: list[Path], settings: TrainSpec) -> str:
    """How the holdout was drawn and how many held-back images have a near-duplicate among the fit images
    (``data.groups.near_duplicates``); logged, and a warning when the share is high."""
    dups = near_duplicates(fit_paths, holdout_paths)
    how = (f"by part (group_by {settings.group_by!r}" + (f", group_gap {settings.group_gap})" if settings.group_gap
                                                          is not None else ")")
           if settings.group_by else "image by image (no train.group_by)")
    text = (f"holdout     {len(holdout_paths)} of {len(fit_paths) + len(holdout_paths)} images held back {how}; "
            f"{dups.n_with_duplicate} have a near-duplicate among the fit images")
    log.info("holdout", extra=kv(held=len(holdout_paths), near_duplicates=dups.n_with_duplicate,
                                 group_by=settings.group_by))
    if dups.share > NEAR_DUPLICATE_WARN_SHARE:
        pairs = ", ".join(f"{a} ~ {b}" for a, b, _ in dups.examples[:3])
        warning = (f"{dups.share:.0%} of the held-back images have a near-duplicate in the fit set (e.g. {pairs}): "
                   "thresholds and the head choice will be optimistic. If several images show one part, hold back "
                   "whole parts: --group-by REGEX (a capture group of the file name naming the part)")
        log.warning("holdout has near-duplicates in the fit set", extra=kv(share=round(dups.share, 3)))
        text += f"\nwarning     {warning}"
    return text


def bundle_latency(bundle: Bundle, runs: int = LATENCY_RUNS) -> LatencyStats:
    """ONNX Runtime latency of one image through ``bundle`` (its calibration images, the line's engine settings)."""
    engine = OrtEngine(bundle)
    try:
        return interleaved_latency({"bundle": engine_runner(engine, bundle.calibration_images())}, runs).stats("bundle")
    finally:
        engine.close()
