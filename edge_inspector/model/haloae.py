"""HaloAE: a local-attention auto-encoder that reconstructs frozen backbone features (DFR style).

uint8 RGB image -> ImageNet normalisation -> frozen multi-scale backbone map (every layer pooled or resized to one
grid, concatenated) -> encoder (stem conv + bottleneck blocks with local attention) -> latent -> mirrored decoder
-> reconstructed feature map. The anomaly map is the channel mean of the squared feature error. Two heads exist only
to shape training: an image reconstruction head and a CutPaste classifier on the latent.

With ``spec.location`` set, the same backbone pass also feeds the location head (``model/location.py``): a fitted
per-cell Gaussian of the features, whose distance map ``head_maps`` returns beside the reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.model.attention import make_attention
from edge_inspector.model.backbones import Backbone
from edge_inspector.model.location import LocationGaussian
from edge_inspector.model.presets import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CUTPASTE_CLASSES = 3
"""normal, CutPaste-normal, CutPaste-scar."""


class Bottleneck(nn.Module):
    """1x1 conv -> local attention -> ReLU -> k x k conv -> BN, residual add, ReLU (the paper's block)."""

    def __init__(self, c_in: int, c_out: int, heads: int, head_dim: int, kernel: int, spec: ModelSpec):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.attention = make_attention(spec.attention, c_out, heads, head_dim, spec.block, spec.halo)
        self.conv = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.attention(self.reduce(x)))
        y = self.bn(self.conv(y))
        return F.relu(y + self.shortcut(x))


@dataclass
class TrainOutput:
    """Everything a training step needs. Reconstructions cover only the first ``n_decode`` images."""

    features: torch.Tensor
    reconstruction: torch.Tensor
    image_reconstruction: torch.Tensor
    logits: torch.Tensor


class HaloAE(nn.Module):
    """Frozen backbone + attention auto-encoder on its feature map, with training heads.

    Args:
        spec: the model layout.
        pretrained: load ImageNet backbone weights (False only for smoke tests).
    """

    def __init__(self, spec: ModelSpec, pretrained: bool = True):
        super().__init__()
        self.spec = spec
        self.backbone = Backbone(spec.backbone, spec.backbone_layers, spec.vgg19_weights, pretrained)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        # (x - mean) / std as a per-channel 1x1 conv: ONNX Runtime runs the integer graphs channels-last, where an
        # elementwise Sub/Div broadcast over 3 channels cost 2 ms of a 10 ms image (measured); a conv stays fast.
        self.register_buffer("pixel_scale", (1 / std).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", (-mean / std).view(3), persistent=False)
        self.feature_channels = sum(self.backbone.channels[: len(spec.layers)])
        # Per-channel standardisation of the backbone map, fitted on training images (``set_feature_statistics``):
        # raw Lite0 channels differ in scale by 10x+, and the squared error would otherwise be a few channels' error.
        self.register_buffer("feature_mean", torch.zeros(1, self.feature_channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.feature_channels, 1, 1))

        w = spec.widths
        pad = 0 if spec.stem_valid else spec.stem_kernel // 2
        self.stem = nn.Sequential(
            nn.Conv2d(self.feature_channels, w[0], spec.stem_kernel, padding=pad, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(),
        )
        blocks = list(zip(w[:-1], w[1:], spec.heads, spec.kernels))
        self.encoder = nn.Sequential(*(Bottleneck(a, b, h, spec.head_dim, k, spec) for a, b, h, k in blocks))
        self.decoder = nn.Sequential(*(Bottleneck(b, a, h, spec.head_dim, k, spec) for a, b, h, k in reversed(blocks)))
        self.to_features = nn.Conv2d(w[0], self.feature_channels, spec.stem_kernel, padding=spec.stem_kernel // 2)
        self.image_head = self._image_head(spec)
        self.classifier = nn.Linear(2 * w[-1], CUTPASTE_CLASSES)
        self.location: LocationGaussian | None = None
        if spec.location is not None:
            loc = spec.location
            channels = sum(c for name, c in zip(spec.backbone_layers, self.backbone.channels) if name in loc.layers)
            self.location = LocationGaussian(channels, spec.location_grid, loc.dims, loc.shrinkage, loc.blur_sigma)

    def _image_head(self, spec: ModelSpec) -> nn.Sequential:
        """Feature grid -> image: 1x1 conv, then (nearest x2 upsample + 3x3 conv) until the input size."""
        c = spec.image_head_width
        layers: list[nn.Module] = [nn.Conv2d(self.feature_channels, c, 1), nn.ReLU()]
        scale = 1
        while scale < spec.grid_stride:
            c_next = max(8, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_next, 3, padding=1), nn.ReLU()]
            c, scale = c_next, scale * 2
        layers.append(nn.Conv2d(c, 3, 3, padding=1))
        return nn.Sequential(*layers)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> float (B, 3, H, W) with ImageNet mean/std (cast, permute, 1x1 conv)."""
        x = images.permute(0, 3, 1, 2).float()
        return F.conv2d(x, self.pixel_scale, self.pixel_shift, groups=3)

    def backbone_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images -> every backbone layer the model uses, by name (one backbone pass)."""
        return dict(zip(self.spec.backbone_layers, self.backbone(x)))

    def features(self, x: torch.Tensor, maps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised images -> (B, C, gh, gw) frozen multi-scale feature map (avg-pooled or resized, concatenated)."""
        own = self.backbone(x, self.spec.layers) if maps is None else [maps[name] for name in self.spec.layers]
        grid = _to_grid(own, self.spec.grid)
        return ((grid - self.feature_mean) / self.feature_std).detach()

    def location_features(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The location head's (B, C, h, w) input grid from the backbone maps."""
        return _to_grid([maps[name] for name in self.spec.location.layers], self.spec.location_grid)

    def location_map(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, gh, gw) location-head distance, brought to the auto-encoder's grid (bilinear)."""
        distance = self.location(self.location_features(maps))
        return F.interpolate(distance, size=self.spec.grid, mode="bilinear", align_corners=False)

    def head_maps(self, x: torch.Tensor, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Normalised images -> raw maps on the auto-encoder grid for ``heads`` ('reconstruction', 'location')."""
        maps = self.backbone_maps(x)
        out = {}
        if "reconstruction" in heads:
            f = self.features(x, maps)
            out["reconstruction"] = (f - self.reconstruct(f)).square().mean(dim=1, keepdim=True)
        if "location" in heads:
            if self.location is None:
                raise ValueError("this model has no location head (model.location is not set)")
            out["location"] = self.location_map(maps)
        return out

    @torch.no_grad()
    def fit_location(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Fit the location head on uint8 (N, H, W, 3) normal images (unflipped: positions are what it models)."""
        grids = [self.location_features(self.backbone_maps(self.normalize(images[start : start + batch_size])))
                 for start in range(0, len(images), batch_size)]
        self.location.fit(torch.cat(grids))

    @torch.no_grad()
    def set_feature_statistics(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Fit the per-channel mean/std of the feature map on uint8 (N, H, W, 3) normal images."""
        self.feature_mean.zero_()
        self.feature_std.fill_(1.0)
        total = torch.zeros(self.feature_channels, dtype=torch.float64)
        squares = torch.zeros(self.feature_channels, dtype=torch.float64)
        count = 0
        for start in range(0, len(images), batch_size):
            f = self.features(self.normalize(images[start : start + batch_size])).double()
            total += f.sum(dim=(0, 2, 3))
            squares += f.square().sum(dim=(0, 2, 3))
            count += f.shape[0] * f.shape[2] * f.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        self.feature_mean.copy_(mean.view(1, -1, 1, 1).float())
        # a floor keeps dead channels (std ~ 0) from turning noise into huge errors
        self.feature_std.copy_(std.clamp_min(1e-2 * float(std.mean()) + 1e-6).view(1, -1, 1, 1).float())

    def encode(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.stem(f))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        f_hat = self.to_features(self.decoder(z))
        if self.spec.stem_valid:
            f_hat = F.interpolate(f_hat, size=self.spec.grid, mode="nearest")
        return f_hat

    def reconstruct(self, f: torch.Tensor) -> torch.Tensor:
        """Feature map -> its reconstruction through the bottleneck."""
        return self.decode(self.encode(f))

    def error_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> (B, 1, gh, gw) channel-mean squared feature error (the raw anomaly map)."""
        f = self.features(x)
        return (f - self.reconstruct(f)).square().mean(dim=1, keepdim=True)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> (B, 1, gh, gw) raw anomaly map (what the exported graph computes)."""
        return self.error_map(self.normalize(images))

    def forward(self, x: torch.Tensor, n_decode: int | None = None) -> TrainOutput:
        """Training pass on normalised images; the decoder and image head run on the first ``n_decode`` only.

        Reconstruction losses use normal images only, so decoding the CutPaste copies would be wasted work.
        """
        f = self.features(x)
        z = self.encode(f)
        pooled = torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        n = x.shape[0] if n_decode is None else n_decode
        f_hat = self.decode(z[:n])
        return TrainOutput(f, f_hat, self.image_head(f_hat), self.classifier(pooled))


def _to_grid(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool finer maps and bilinearly resize coarser ones to ``grid``, then concatenate channels."""
    gh, gw = grid
    out = []
    for fmap in maps:
        h, w = int(fmap.shape[-2]), int(fmap.shape[-1])
        if (h, w) == (gh, gw):
            out.append(fmap)
        elif h > gh:
            out.append(F.avg_pool2d(fmap, (h // gh, w // gw)))
        else:
            out.append(F.interpolate(fmap, size=(gh, gw), mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1)


def build_model(spec: ModelSpec, pretrained: bool = True) -> HaloAE:
    """A HaloAE for ``spec`` with its backbone frozen (ImageNet weights unless ``pretrained=False``)."""
    return HaloAE(spec, pretrained=pretrained)
