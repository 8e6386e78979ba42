"""Loss terms and the paper's logistic loss-weight schedule."""

from __future__ import annotations

import pytest
import torch

from edge_inspector.model.haloae import TrainOutput
from edge_inspector.model.presets import LossSchedule
from edge_inspector.training.losses import haloae_loss, loss_weights, ssim


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_schedule_endpoints_match_the_paper():
    start, end = loss_weights(0.0, LossSchedule()), loss_weights(1.0, LossSchedule())
    assert start.classification == pytest.approx(0.97, abs=0.01) and end.classification == pytest.approx(0.11, abs=0.01)
    assert start.features == pytest.approx(0.0, abs=0.01) and end.features == pytest.approx(0.34, abs=0.01)
    assert start.image == pytest.approx(0.0, abs=0.01) and end.image == pytest.approx(0.55, abs=0.01)
    middle = loss_weights(0.5, LossSchedule())
    assert middle.features == pytest.approx(0.17) and middle.classification == pytest.approx(0.54)
    steps = [loss_weights(p / 10, LossSchedule()).features for p in range(11)]
    assert steps == sorted(steps)


def test_ssim_is_one_for_identical_maps_and_drops_with_noise():
    a = torch.rand(2, 5, 32, 32)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, a + 0.3 * torch.randn_like(a)).item() < 0.8
    assert ssim(a, a * 0.5 + 0.25).item() < ssim(a, a).item()


def test_reconstruction_terms_use_only_the_normal_part_of_the_batch():
    """The CutPaste images (after the first n) must not affect the reconstruction terms."""
    features = torch.rand(6, 4, 8, 8)
    images = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = TrainOutput(features, features[:2].clone(), images[:2].clone(), torch.zeros(6, 3))
    weights = loss_weights(1.0, LossSchedule())
    _, terms = haloae_loss(out, images, labels, weights)
    assert terms["feat"] == pytest.approx(0.0, abs=1e-5) and terms["img"] == pytest.approx(0.0, abs=1e-5)
    assert terms["ce"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)
    features[2:] = 100.0
    images[2:] = -5.0
    _, again = haloae_loss(out, images, labels, weights)
    assert again == terms
    out.reconstruction = out.reconstruction + 1.0
    _, moved = haloae_loss(out, images, labels, weights)
    assert moved["feat"] > 1.0 and moved["loss"] > terms["loss"]
