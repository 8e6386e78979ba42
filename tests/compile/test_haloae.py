"""HaloAE: presets and their errors, shapes on non-square inputs, frozen backbone, export to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.errors import ConfigError
from edge_inspector.model.haloae import HaloAE, build_model
from edge_inspector.model.presets import BUILTIN_PRESETS, load_preset


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_lite(*extra: str, pretrained: bool = False) -> HaloAE:
    spec = load_preset("haloae-lite", ["model.width=64", "model.height=128", *extra]).model
    return build_model(spec, pretrained=pretrained)


def test_builtin_presets_load_and_default_is_lite():
    assert load_preset().name == "haloae-lite"
    for name in BUILTIN_PRESETS:
        preset = load_preset(name)
        assert preset.model.fits(preset.model.width) and preset.model.fits(preset.model.height)
    paper = load_preset("haloae-paper").model
    assert paper.grid == (64, 64) and paper.latent_grid == (60, 60) and paper.widths == [234, 234, 117, 58, 29]


def test_preset_errors_name_the_key_and_what_fits(tmp_path):
    with pytest.raises(ConfigError, match="widht: unknown key. Did you mean 'width'"):
        load_preset("haloae-lite", ["model.widht=320"])
    with pytest.raises(ConfigError, match=r"width 128 does not fit.*Sizes that fit: \[64, 112, 160"):
        load_preset("haloae-paper", ["model.width=128"])
    with pytest.raises(ConfigError, match="attention"):
        load_preset("haloae-lite", ["model.attention=global"])
    with pytest.raises(ConfigError, match="Unknown preset 'haloae-huge'"):
        load_preset("haloae-huge")
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("model:\n  width: 320\n  height: 128\ntrain:\n  epochs: 3\n")
    preset = load_preset(str(yaml_path), ["train.lr=0.001"])
    assert (preset.model.width, preset.model.height, preset.train.epochs, preset.train.lr) == (320, 128, 3, 0.001)


def test_normalize_is_imagenet_mean_std_on_uint8_rgb():
    model = tiny_lite()
    images = torch.randint(0, 256, (2, 128, 64, 3), dtype=torch.uint8)
    x = model.normalize(images)
    want = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    assert x.shape == (2, 3, 128, 64) and torch.allclose(x, want, atol=1e-5)


@pytest.mark.parametrize("attention", ["halo", "block_mean"])
def test_shapes_on_a_non_square_input(attention):
    model = tiny_lite(f"model.attention={attention}")
    x = model.normalize(torch.randint(0, 256, (3, 128, 64, 3), dtype=torch.uint8))
    out = model(x, n_decode=1)
    channels, (gh, gw) = model.feature_channels, (128 // model.spec.grid_stride, 64 // model.spec.grid_stride)
    assert out.features.shape == (3, channels, gh, gw)
    assert out.reconstruction.shape == (1, channels, gh, gw)
    assert out.image_reconstruction.shape == (1, 3, 128, 64)
    assert out.logits.shape == (3, 3)
    assert model.error_map(x).shape == (3, 1, gh, gw)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


def test_backbone_stays_frozen_and_in_eval_while_training():
    model = tiny_lite()
    model.train()
    assert model.encoder.training and not model.backbone.net.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    x = model.normalize(torch.randint(0, 256, (3, 128, 64, 3), dtype=torch.uint8))
    out = model(x)
    (out.reconstruction.square().mean() + out.logits.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


class AnomalyMapGraph(torch.nn.Module):
    """uint8 image -> raw anomaly map: the part of the exported graph this package owns."""

    def __init__(self, model: HaloAE):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.anomaly_map(images)


def export_and_run(model: HaloAE, images: torch.Tensor, path) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime output, torch output) for ``images``."""
    ort = pytest.importorskip("onnxruntime")
    graph = AnomalyMapGraph(model).eval()  # a fresh wrapper is in train mode; export would restore that
    torch.onnx.export(graph, (images,), str(path), input_names=["image"], output_names=["map"], opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        want = graph(images).numpy()
    return got, want


def test_exports_with_uint8_input_and_onnx_runtime_matches(tmp_path):
    model = tiny_lite()
    got, want = export_and_run(model, torch.randint(0, 256, (1, 128, 64, 3), dtype=torch.uint8), tmp_path / "lite.onnx")
    assert got.shape == (1, 1, 128 // model.spec.grid_stride, 64 // model.spec.grid_stride)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_paper_preset_builds_trains_and_exports_with_random_vgg19(tmp_path):
    """haloae-paper at 112x112 (grid 28 -> 24 after the 5x5 valid stem, 2x2 blocks of 12); random VGG19 weights."""
    preset = load_preset("haloae-paper", ["model.width=112", "model.height=112"])
    model = build_model(preset.model, pretrained=False)
    assert model.feature_channels == 704
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    model.train()
    for _ in range(2):
        x = model.normalize(images)
        out = model(x)
        loss = (out.features - out.reconstruction).square().mean() + out.logits.logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    got, want = export_and_run(model, images[:1], tmp_path / "paper.onnx")
    assert got.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_feature_statistics_standardise_each_channel_and_travel_in_the_state_dict():
    model = tiny_lite(pretrained=True)
    images = torch.randint(0, 256, (4, 128, 64, 3), dtype=torch.uint8)
    model.set_feature_statistics(images, batch_size=3)
    f = model.features(model.normalize(images))
    std = f.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(f.mean(dim=(0, 2, 3)), torch.zeros(()), atol=1e-3)
    # unit std, except near-dead channels whose std is floored so their noise is not amplified
    assert (std < 1.01).all() and ((std - 1).abs() < 1e-2).float().mean() > 0.9
    assert {"feature_mean", "feature_std"} <= set(model.state_dict())
