"""The HaloAE training loop: seeded, CutPaste batches, scheduled loss, a checkpoint every epoch, resumable.

Each step takes ``batch_size`` originals (randomly flipped), adds their CutPaste-normal and CutPaste-scar copies,
runs the frozen backbone on all of them, the encoder + classifier on all, and the decoder + image head on the
originals only (reconstruction is learned from normal images alone). Checkpoints hold the model, the optimiser,
the epoch, every RNG state and the preset, and are written atomically, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector.data.augment import cutpaste_batch
from edge_inspector.errors import ConfigError, DataError
from edge_inspector.log import kv
from edge_inspector.model.haloae import HaloAE, build_model
from edge_inspector.model.presets import Preset, TrainSpec
from edge_inspector.training.losses import haloae_loss, loss_weights

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edge-inspector/haloae-checkpoint"
CHECKPOINT_VERSION = 2
"""2: the model holds the location head's fitted statistics."""
FEATURE_STAT_IMAGES = 128
"""Training images used to fit the feature map's per-channel mean/std (enough for stable statistics)."""


@dataclass
class FitReport:
    """What a ``fit`` call did."""

    epochs_run: int
    """Epochs trained by this call (0 when a finished checkpoint was found)."""
    epochs_total: int
    steps: int
    """Optimiser steps taken by this call."""
    duration_s: float
    losses: dict[str, float] = field(default_factory=dict)
    """Mean loss terms over the last epoch trained (loss, ce, feat, img)."""
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0


def set_threads(threads: int) -> int:
    """torch intra-op threads: ``threads`` or, when 0, every core this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads or cores
    torch.set_num_threads(n)
    return n


def trainable_parameters(model: HaloAE) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_checkpoint(path: Path, model: HaloAE, preset: Preset, extra: dict[str, Any] | None = None) -> Path:
    """Write model weights (backbone included, so loading needs no weights file) and the preset, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "preset": preset.model_dump(mode="json"),
        "model": model.state_dict(),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)
    return path


def _read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Checkpoint not found: {path}")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise DataError(f"{path} is not a readable checkpoint: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not an edge-inspector HaloAE checkpoint")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise DataError(f"{path} is a version {doc.get('version')} checkpoint; this edge-inspector reads version "
                        f"{CHECKPOINT_VERSION} (retrain with 'edge-inspector train', or use the edge-inspector "
                        "release that wrote it)")
    return doc


def load_checkpoint(path: Path) -> tuple[HaloAE, Preset]:
    """The trained model (eval mode) and its preset from a checkpoint written by ``fit`` or ``save_checkpoint``."""
    doc = _read_checkpoint(path)
    preset = Preset.model_validate(doc["preset"])
    model = build_model(preset.model, pretrained=False)
    model.load_state_dict(doc["model"], strict=True)
    return model.eval(), preset


def _check_images(images: np.ndarray, model: HaloAE) -> None:
    spec = model.spec
    want = (spec.height, spec.width, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
        raise DataError(f"training images must be uint8 (N, {want[0]}, {want[1]}, 3) RGB, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DataError("no training images")


def _batch(
    images: np.ndarray, index: np.ndarray, spec: TrainSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    originals = images[index].copy()
    for i in range(len(originals)):
        if spec.hflip and rng.random() < 0.5:
            originals[i] = originals[i, :, ::-1]
        if spec.vflip and rng.random() < 0.5:
            originals[i] = originals[i, ::-1]
    return cutpaste_batch(originals, rng)


def _resume(ckpt_path: Path, model: HaloAE, optimizer: torch.optim.Optimizer,
            rng: np.random.Generator) -> tuple[int, dict[str, float]]:
    """Restore model, optimiser and both RNG states from an epoch checkpoint; returns (epochs done, their losses)."""
    doc = _read_checkpoint(ckpt_path)
    saved = Preset.model_validate(doc["preset"])
    if saved.model != model.spec:
        raise ConfigError(f"{ckpt_path} was trained with another model layout; use a new output folder or resume=False")
    model.load_state_dict(doc["model"], strict=True)
    optimizer.load_state_dict(doc["optimizer"])
    rng.bit_generator.state = doc["numpy_rng"]
    torch.set_rng_state(doc["torch_rng"])
    log.info("resuming", extra=kv(checkpoint=ckpt_path, epoch=int(doc["epoch"])))
    return int(doc["epoch"]), dict(doc.get("losses", {}))


def _fit_statistics(model: HaloAE, images: np.ndarray, rng: np.random.Generator) -> None:
    """Before the first epoch: the feature map's per-channel mean/std and, with a location head, its Gaussians."""
    stats_index = rng.permutation(len(images))[:FEATURE_STAT_IMAGES]
    model.set_feature_statistics(torch.from_numpy(images[np.sort(stats_index)]))
    if model.location is not None:
        # closed form on every fit image (no gradients); stored in every checkpoint with the weights
        model.fit_location(torch.from_numpy(images))
        log.info("location head fitted", extra=kv(images=len(images), grid=model.spec.location_grid))


def _train_epoch(model: HaloAE, images: np.ndarray, order: np.ndarray, spec: TrainSpec,
                 optimizer: torch.optim.Optimizer, rng: np.random.Generator, epoch: int, steps_per_epoch: int,
                 bar: tqdm) -> dict[str, float]:
    """One epoch of optimiser steps over ``order``; returns the mean loss terms."""
    sums: dict[str, float] = {}
    for step in range(steps_per_epoch):
        index = order[step * spec.batch_size : (step + 1) * spec.batch_size]
        if len(index) == 0:
            index = order[: spec.batch_size]
        batch, labels = _batch(images, index, spec, rng)
        weights = loss_weights((epoch + step / steps_per_epoch) / spec.epochs, spec.loss)
        x = model.normalize(torch.from_numpy(batch))
        out = model(x, n_decode=len(index))
        loss, terms = haloae_loss(out, x, torch.from_numpy(labels), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
    return {k: v / steps_per_epoch for k, v in sums.items()}


def fit(
    model: HaloAE,
    images: np.ndarray,
    spec: TrainSpec,
    work_dir: Path,
    resume: bool = True,
    progress: bool = True,
    preset: Preset | None = None,
) -> FitReport:
    """Train ``model`` on normal images, checkpointing to ``work_dir/checkpoints/last.pt`` after every epoch.

    Args:
        model: a HaloAE from ``build_model``.
        images: (N, H, W, 3) uint8 RGB training images at the model's size.
        spec: the training settings.
        work_dir: folder for checkpoints.
        resume: continue from ``last.pt`` when it exists (its model layout must match).
        progress: show a tqdm bar with the loss terms.
        preset: stored in checkpoints (default: built from ``model.spec`` and ``spec``).
    """
    _check_images(images, model)
    preset = preset or Preset(model=model.spec, train=spec)
    threads = set_threads(spec.threads)
    ckpt_path = Path(work_dir) / "checkpoints" / "last.pt"
    rng = np.random.default_rng(spec.seed)
    torch.manual_seed(spec.seed)
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=spec.lr, weight_decay=spec.weight_decay)
    if resume and ckpt_path.is_file():
        start_epoch, losses = _resume(ckpt_path, model, optimizer, rng)
    else:
        start_epoch, losses = 0, {}
        _fit_statistics(model, images, rng)
    samples = spec.samples_per_epoch or len(images)
    steps_per_epoch = max(1, math.ceil(samples / spec.batch_size))
    log.info("training", extra=kv(images=len(images), epochs=spec.epochs, steps_per_epoch=steps_per_epoch, threads=threads))
    started, steps = time.perf_counter(), 0
    bar = tqdm(total=steps_per_epoch * spec.epochs, initial=start_epoch * steps_per_epoch, disable=not progress,
               unit="step", desc=f"train {model.spec.width}x{model.spec.height}")
    model.train()
    try:
        for epoch in range(start_epoch, spec.epochs):
            order = np.concatenate([rng.permutation(len(images)) for _ in range(math.ceil(samples / len(images)))])
            losses = _train_epoch(model, images, order, spec, optimizer, rng, epoch, steps_per_epoch, bar)
            steps += steps_per_epoch
            save_checkpoint(ckpt_path, model, preset, {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "losses": losses,
            })
            log.info("epoch done", extra=kv(epoch=epoch + 1, **{k: round(v, 4) for k, v in losses.items()}))
    finally:
        bar.close()
        model.eval()
    return FitReport(
        epochs_run=spec.epochs - start_epoch,
        epochs_total=spec.epochs,
        steps=steps,
        duration_s=time.perf_counter() - started,
        losses=losses,
        checkpoint=ckpt_path if ckpt_path.is_file() else None,
        resumed_from_epoch=start_epoch,
    )
