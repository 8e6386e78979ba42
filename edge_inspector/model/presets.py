"""Typed HaloAE presets: model layout, training schedule and scoring, loaded from YAML with key=value overrides.

Built-in presets live in ``edge_inspector/presets/<name>.yaml`` (package data): ``haloae-lite`` (default,
EfficientNet-Lite0, sized for a small CPU) and ``haloae-paper`` (VGG19, the paper's layout). Any other argument to
``load_preset`` is read as a YAML path. Unknown keys are refused with the allowed ones listed.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from pydantic import Field, model_validator

from edge_inspector.config import StrictModel, deep_merge, did_you_mean, load_model, parse_overrides, read_yaml
from edge_inspector.errors import ConfigError

BUILTIN_PRESETS = ("haloae-lite", "haloae-paper")
DEFAULT_PRESET = "haloae-lite"

# Deepest stride of each layer, duplicated from backbones.py so presets validate without importing torch.
_LAYER_STRIDES = {
    "efficientnet_lite0": {"stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 16, "stage6": 32, "stage7": 32},
    "vgg19": {
        "relu1_1": 1, "relu1_2": 1, "relu2_1": 2, "relu2_2": 2, "relu3_1": 4, "relu3_2": 4, "relu3_3": 4,
        "relu3_4": 4, "relu4_1": 8, "relu4_4": 8, "relu5_1": 16,
    },
}


class LocationSpec(StrictModel):
    """The location head (edge_inspector.model.location): a Gaussian of backbone features per cell of a coarse grid."""

    layers: list[str] = ["stage4", "stage5", "stage6"]
    """Backbone layers it models (pooled or resized to its grid, concatenated)."""
    grid_stride: int = Field(32, gt=0)
    """Input pixels per cell (32: an 8x8 grid at 256x256)."""
    dims: int = Field(128, gt=0)
    """PCA components kept; the head stores cells x dims x dims floats (1M for 8x8 x 128)."""
    shrinkage: float = Field(0.01, ge=0)
    """Added to each cell covariance's diagonal (standardised units)."""
    blur_sigma: float = Field(0.5, ge=0)
    """Smoothing of its map, in its own cells."""


class ModelSpec(StrictModel):
    """The network: backbone and feature grid, encoder/decoder layout, attention kind, optional location head."""

    backbone: Literal["efficientnet_lite0", "vgg19"] = "efficientnet_lite0"
    vgg19_weights: str | None = None
    """Path of torchvision's VGG19 ImageNet state dict (vgg19-dcbb9e9d.pth); needed by the vgg19 backbone."""
    width: int = Field(256, gt=0)
    """Model input width in pixels."""
    height: int = Field(256, gt=0)
    """Model input height in pixels (need not equal width: e.g. 256x640 for tall parts)."""
    input_pixels: int = Field(256 * 256, gt=0)
    """Pixel budget of the input when ``train`` chooses width and height from the training images (any side not
    set): their median aspect ratio at about this many pixels (edge_inspector.model.input_size)."""
    resize: Literal["stretch", "letterbox"] = "stretch"
    """How frames are fitted to width x height (see edge_inspector.preprocess)."""
    layers: list[str] = ["stage2", "stage3", "stage5"]
    """Backbone layers concatenated into the feature map."""
    grid_stride: int = Field(8, gt=0)
    """Input pixels per feature-grid cell: every layer is pooled or resized to (height, width) / grid_stride."""
    stem_kernel: int = Field(1, gt=0)
    """Kernel of the first encoder conv (feature channels -> widths[0])."""
    stem_valid: bool = False
    """True: the stem conv is unpadded and shrinks the grid by stem_kernel - 1 (paper: 5x5, 64 -> 60)."""
    widths: list[int] = [64, 64, 48, 32, 24]
    """Encoder widths: stem output, then the output of each bottleneck block; the last is the latent width."""
    heads: list[int] = [2, 2, 2, 2]
    """Attention heads per bottleneck block."""
    head_dim: int = Field(16, gt=0)
    kernels: list[int] = [3, 3, 3, 3]
    """Spatial conv kernel per bottleneck block (3 or 5 in the paper)."""
    block: int = Field(8, gt=0)
    """Attention query block side (cells)."""
    halo: int = Field(2, ge=0)
    """Attention key border around each block (cells); 2 * halo <= block."""
    attention: Literal["halo", "block_mean"] = "halo"
    """halo: correct local self-attention. block_mean: what the official code computes (ablation)."""
    image_head_width: int = Field(16, gt=0)
    """Channels of the image reconstruction head (training only)."""
    location: LocationSpec | None = None
    """The location head; None leaves it out (score.head must then be 'reconstruction')."""

    @property
    def backbone_layers(self) -> list[str]:
        """Every layer the backbone must deliver: the auto-encoder's, then the location head's."""
        extra = [layer for layer in (self.location.layers if self.location else []) if layer not in self.layers]
        return [*self.layers, *extra]

    @property
    def location_grid(self) -> tuple[int, int]:
        """(height, width) of the location head's grid."""
        stride = self.location.grid_stride if self.location else self.grid_stride
        return self.height // stride, self.width // stride

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the feature map."""
        return self.height // self.grid_stride, self.width // self.grid_stride

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(height, width) of the map the attention blocks tile."""
        shrink = self.stem_kernel - 1 if self.stem_valid else 0
        gh, gw = self.grid
        return gh - shrink, gw - shrink

    def size_step(self) -> int:
        """Input sizes must be multiples of this (the coarsest stride among the grid and the layers)."""
        strides = _LAYER_STRIDES[self.backbone]
        grid_strides = [self.grid_stride] + ([self.location.grid_stride] if self.location else [])
        return max(grid_strides + [strides.get(layer, 1) for layer in self.backbone_layers])

    def fits(self, size: int) -> bool:
        """Whether an input side of ``size`` pixels gives a grid the attention blocks tile."""
        shrink = self.stem_kernel - 1 if self.stem_valid else 0
        cells = size // self.grid_stride - shrink
        return size % self.size_step() == 0 and cells > 0 and cells % self.block == 0

    def sizes_that_fit(self, near: int, count: int = 6) -> list[int]:
        candidates = [s for s in range(self.size_step(), 4 * max(near, 64) + 1, self.size_step()) if self.fits(s)]
        return sorted(sorted(candidates, key=lambda s: abs(s - near))[:count])

    @model_validator(mode="after")
    def _check_layout(self) -> ModelSpec:
        strides = _LAYER_STRIDES[self.backbone]
        unknown = [layer for layer in self.layers if layer not in strides]
        if unknown or not self.layers:
            raise ValueError(f"layers {unknown or '[]'} unknown for {self.backbone}; allowed: {', '.join(strides)}")
        if self.location is not None:
            unknown = [layer for layer in self.location.layers if layer not in strides]
            if unknown or not self.location.layers:
                raise ValueError(f"location.layers {unknown or '[]'} unknown for {self.backbone}; "
                                 f"allowed: {', '.join(strides)}")
        blocks = len(self.widths) - 1
        if blocks < 1 or len(self.heads) != blocks or len(self.kernels) != blocks:
            raise ValueError(
                f"widths has {len(self.widths)} entries, so heads and kernels need {blocks} each "
                f"(got {len(self.heads)} and {len(self.kernels)})"
            )
        if any(k % 2 == 0 for k in [*self.kernels, self.stem_kernel]):
            raise ValueError("kernels and stem_kernel must be odd")
        if 2 * self.halo > self.block:
            raise ValueError(f"halo {self.halo} must be at most block/2 = {self.block // 2}")
        for side, size in (("width", self.width), ("height", self.height)):
            if not self.fits(size):
                raise ValueError(
                    f"{side} {size} does not fit: it must be a multiple of {self.size_step()} whose grid "
                    f"({size}/{self.grid_stride}{' - ' + str(self.stem_kernel - 1) if self.stem_valid else ''}) "
                    f"is a multiple of block {self.block}. Sizes that fit: {self.sizes_that_fit(size)}"
                )
        return self


class LossSchedule(StrictModel):
    """Logistic loss weights over training progress p in [0, 1] (the paper's, scaled to the epoch budget).

    w(p) = start + (end - start) * sigmoid(steepness * (p - midpoint)).
    """

    classification_start: float = 0.97
    classification_end: float = 0.11
    feature_end: float = 0.34
    image_end: float = 0.55
    midpoint: float = Field(0.5, ge=0.0, le=1.0)
    steepness: float = Field(10.0, gt=0)


class TrainSpec(StrictModel):
    """Training: budget, optimiser, seed, threads and the loss schedule."""

    epochs: int = Field(20, gt=0)
    samples_per_epoch: int | None = Field(None, gt=0)
    """Originals drawn (with reshuffling) per epoch; default: every training image once."""
    batch_size: int = Field(4, gt=0)
    """Originals per step; each comes with its CutPaste-normal and CutPaste-scar copies (3x images)."""
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    seed: int = 0
    threads: int = Field(0, ge=0)
    """torch CPU threads; 0 = every core."""
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of the training good images held back from fitting, for normal statistics and thresholds."""
    group_by: str | None = None
    """Regular expression whose first capture group, searched in each file name, names the part the image shows:
    the holdout then takes whole parts (``data/groups.py``), so no held-back image has a sibling frame in the fit
    set. None: images are held back one by one."""
    group_gap: int | None = Field(None, ge=0)
    """With ``group_by`` capturing a number (a frame counter): numbers within this gap of the previous one, sorted,
    belong to the same part (magnetic_tile: ``group_by='num_(\\d+)'``, ``group_gap=150``)."""
    hflip: bool = True
    """Random horizontal flips of the originals (off for parts with a handedness)."""
    vflip: bool = True
    loss: LossSchedule = LossSchedule()


HEADS = ("auto", "reconstruction", "location", "fused")


class ScoreSettings(StrictModel):
    """Which map the model is to ship and how it becomes an image score (the preset's ``score:`` section, read by
    evaluation and export); the manifest's ``bundle.manifest.ScoreSpec`` records what was shipped."""

    head: Literal["auto", "reconstruction", "location", "fused"] = "reconstruction"
    """reconstruction: HaloAE's feature error (the paper's). location: the location head. fused: both, each
    standardised on held-back good images, summed (reconstruction weighted by fused_weight). auto: whichever of the
    three separates synthetic defects on held-back good images best (chosen at export, recorded in the manifest)."""
    fused_weight: float = Field(1.0, ge=0)
    """Weight of the reconstruction map in 'fused'."""
    aggregation: Literal["mean", "max", "topk"] = "mean"
    """mean: the paper's. max: the worst cell. topk: mean of the worst topk_fraction of cells."""
    topk_fraction: float = Field(0.01, gt=0.0, le=1.0)
    blur_sigma: float = Field(1.0, ge=0.0)
    """Gaussian blur of the feature-grid map, in grid cells (0 = off)."""


class Preset(StrictModel):
    """A complete HaloAE configuration."""

    name: str = "custom"
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    score: ScoreSettings = ScoreSettings()

    @model_validator(mode="after")
    def _check_head(self) -> Preset:
        if self.score.head != "reconstruction" and self.model.location is None:
            raise ValueError(f"score.head {self.score.head} needs the location head: set model.location "
                             "(e.g. model.location.layers=[stage4,stage5,stage6]) or score.head=reconstruction")
        return self


def builtin_preset_data(name: str) -> dict:
    """The raw mapping of a built-in preset."""
    ref = resources.files("edge_inspector").joinpath("presets", f"{name}.yaml")
    with resources.as_file(ref) as path:
        return read_yaml(path)


def load_preset(name_or_path: str | None = None, overrides: list[str] | None = None) -> Preset:
    """A built-in preset name ('haloae-lite', 'haloae-paper') or a YAML path, then ``key=value`` overrides.

    >>> load_preset("haloae-lite", ["model.width=320"]).model.width
    320
    """
    name_or_path = name_or_path or DEFAULT_PRESET
    if name_or_path in BUILTIN_PRESETS:
        data, origin = builtin_preset_data(name_or_path), f"preset {name_or_path}"
    elif name_or_path.endswith((".yaml", ".yml")):
        data, origin = read_yaml(name_or_path), name_or_path
    else:
        raise ConfigError(f"Unknown preset '{name_or_path}'.{did_you_mean(name_or_path, BUILTIN_PRESETS)} "
                          f"Built-in: {', '.join(BUILTIN_PRESETS)}; or give a .yaml file path")
    data.setdefault("name", name_or_path)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        origin += " with overrides " + " ".join(overrides)
    return load_model(Preset, data, origin)


def with_score_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """``preset`` with ``score.*`` overrides applied: how a trained model is scored can change without retraining.

    Raises:
        ConfigError: an override outside ``score.`` (model and training settings are fixed by the checkpoint).
    """
    fixed = [o for o in overrides if not o.startswith("score.")]
    if fixed:
        raise ConfigError(f"only score.* settings can change after training (got {' '.join(fixed)}); "
                          "model.* and train.* come from the checkpoint")
    if not overrides:
        return preset
    data = deep_merge(preset.model_dump(mode="json"), parse_overrides(overrides))
    return load_model(Preset, data, f"checkpoint preset with overrides {' '.join(overrides)}")
