"""The backbones: real ImageNet Lite0 weights (known images get their known classes), frozen, VGG19 errors."""

from __future__ import annotations

import cv2
import pytest
import torch

from edge_inspector.errors import ConfigError
from edge_inspector.model.backbones import Backbone, load_lite0, load_vgg19

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the known test images")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _top5(net: torch.nn.Module, image) -> list[int]:
    rgb = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    with torch.no_grad():
        return net(x).topk(5).indices[0].tolist()


def test_lite0_weights_are_the_real_imagenet_ones():
    net = load_lite0(with_head=True).eval()
    cat = _top5(net, skimage_data.chelsea())
    coffee = _top5(net, skimage_data.coffee())
    assert cat[0] in range(281, 286), cat  # tabby / tiger cat / Egyptian cat ...
    assert {967, 968} & set(coffee[:2]), coffee  # espresso / cup
    random_net = load_lite0(with_head=True, pretrained=False).eval()
    assert _top5(random_net, skimage_data.chelsea())[0] not in range(281, 286)


def test_backbone_is_frozen_returns_requested_layers_and_stays_in_eval():
    bb = Backbone("efficientnet_lite0", ["stage3", "stage2"])
    bb.train()
    assert not bb.net.training and not any(p.requires_grad for p in bb.parameters())
    maps = bb(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 40, 8, 12), (1, 24, 16, 24)]
    assert len(bb.net._blocks) == 5  # runs only up to the deepest requested layer


def test_unknown_layer_is_named():
    with pytest.raises(ConfigError, match="stage9.*Allowed"):
        Backbone("efficientnet_lite0", ["stage9"])


def test_vgg19_missing_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(ConfigError, match="vgg19_weights.*download.pytorch.org"):
        load_vgg19(4, None)
    with pytest.raises(ConfigError, match="not found.*nothere.pth"):
        load_vgg19(4, str(tmp_path / "nothere.pth"))


def test_vgg19_loads_a_torchvision_style_state_dict_strictly(tmp_path):
    """A state dict with torchvision's key names loads; one missing a layer is refused, never half-loaded."""
    reference = load_vgg19(12, None, pretrained=False)
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys of the full model are ignored
    good = tmp_path / "vgg19.pth"
    torch.save(state, good)
    loaded = load_vgg19(12, str(good))
    assert torch.equal(loaded[10].weight, reference[10].weight)
    del state["features.10.weight"]
    bad = tmp_path / "broken.pth"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match="not a torchvision VGG19"):
        load_vgg19(12, str(bad))
