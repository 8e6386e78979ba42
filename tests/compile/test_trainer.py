"""The training loop: seeded, checkpoints every epoch, resumes exactly, refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.errors import ConfigError, DataError
from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.training import trainer
from edge_inspector.training.trainer import fit, load_checkpoint

TINY = ["model.width=64", "model.height=64", "train.batch_size=2", "train.samples_per_epoch=4", "train.threads=1",
        "train.lr=0.001"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Six smooth synthetic 'parts': gradients plus a little noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 190, 64, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(64, 0)] * 3, axis=2)
    return np.stack([np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8) for _ in range(6)])


def train(images, tmp_path, epochs: int, resume: bool = True, extra=()):
    preset = load_preset("haloae-lite", [*TINY, f"train.epochs={epochs}", *extra])
    torch.manual_seed(123)  # model init; fit seeds everything it draws itself
    model = build_model(preset.model)
    return model, fit(model, images, preset.train, tmp_path, resume=resume, progress=False, preset=preset)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def test_fit_checkpoints_and_reloads(images, tmp_path):
    model, report = train(images, tmp_path, epochs=2)
    assert report.epochs_run == 2 and report.steps == 4 and report.checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert set(report.losses) == {"loss", "ce", "feat", "img"} and all(np.isfinite(list(report.losses.values())))
    loaded, preset = load_checkpoint(report.checkpoint)
    assert preset.model == model.spec and preset.train.epochs == 2
    x = torch.from_numpy(images[:2])
    with torch.no_grad():
        assert torch.equal(loaded.anomaly_map(x), model.eval().anomaly_map(x))
    assert not list(tmp_path.glob("checkpoints/*.tmp"))


def test_same_seed_same_model_and_resume_continues_exactly(images, tmp_path, monkeypatch):
    straight, _ = train(images, tmp_path / "a", epochs=3)
    again, _ = train(images, tmp_path / "b", epochs=3)
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(straight).items())

    real_save = trainer.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process is killed right after the first epoch's checkpoint
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(images, tmp_path / "c", epochs=3)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed, second = train(images, tmp_path / "c", epochs=3)
    assert second.resumed_from_epoch == 1 and second.epochs_run == 2
    assert all(torch.equal(v, weights(resumed)[k]) for k, v in weights(straight).items())

    _, done = train(images, tmp_path / "c", epochs=3)
    assert done.epochs_run == 0 and done.steps == 0


def test_training_lowers_the_feature_reconstruction_loss(images, tmp_path):
    _, short = train(images, tmp_path / "short", epochs=1, extra=["train.loss.midpoint=0"])
    _, longer = train(images, tmp_path / "long", epochs=6, extra=["train.loss.midpoint=0"])
    assert longer.losses["feat"] < short.losses["feat"]


def test_bad_input_and_layout_mismatch_are_refused(images, tmp_path):
    preset = load_preset("haloae-lite", [*TINY, "train.epochs=1"])
    model = build_model(preset.model, pretrained=False)
    with pytest.raises(DataError, match=r"uint8 \(N, 64, 64, 3\)"):
        fit(model, images[:, :32], preset.train, tmp_path, progress=False)
    with pytest.raises(DataError, match="uint8"):
        fit(model, images.astype(np.float32), preset.train, tmp_path, progress=False)
    train(images, tmp_path, epochs=1)
    other = build_model(load_preset("haloae-lite", [*TINY, "model.attention=block_mean"]).model, pretrained=False)
    with pytest.raises(ConfigError, match="another model layout"):
        fit(other, images, preset.train, tmp_path, progress=False)
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
