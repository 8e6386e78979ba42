"""Manifest of a model bundle: everything the run-time side needs to use the graph correctly.

A bundle folder holds::

    manifest.yaml        this schema
    model.onnx           FP32 or QDQ graph: input uint8 NHWC RGB image at the model size,
                         outputs ``anomaly_map`` (1,1,H,W float32, raw) and ``score`` (1, float32, raw)
    calibration.npz      a few preprocessed images (uint8 NHWC) for parity checks on other engines
    plans/               TensorRT plans built on devices, each with a ``.json`` side-car

Thresholds are *not* baked into the graph: the decision module applies them, so they can change on the line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_inspector.config import StrictModel

SCHEMA_VERSION = 1


class InputSpec(StrictModel):
    name: str = "image"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    color: Literal["RGB"] = "RGB"
    resize: Literal["stretch", "letterbox"] = "stretch"
    """How a frame (or ROI) is brought to width x height before the graph; normalisation is inside the graph."""
    pad_value: int = Field(0, ge=0, le=255)


class OutputSpec(StrictModel):
    anomaly_map: str = "anomaly_map"
    """(1, 1, H, W) float32 raw anomaly map at the model input size."""
    score: str = "score"
    """(1,) float32 raw image score."""


class ScoreStats(StrictModel):
    """Distribution of a score on held-back normal *training* images (never test images)."""

    n: int = Field(ge=0)
    mean: float
    std: float = Field(ge=0)
    min: float
    max: float
    quantiles: dict[str, float] = {}
    """e.g. {"0.5": ..., "0.99": ...}."""


class ScoreSpec(StrictModel):
    head: Literal["reconstruction", "location", "fused"] = "reconstruction"
    """Which map the graph outputs: HaloAE's reconstruction error, the location head's distance, or both fused."""
    head_probe: dict[str, dict[str, float]] = {}
    """When the head was chosen automatically: each candidate's image/pixel AUROC on the synthetic probe set."""
    aggregation: Literal["mean", "max", "topk"] = "mean"
    """How the graph reduces the anomaly map to the image score."""
    topk_fraction: float = Field(0.01, gt=0, le=1)
    blur_sigma: float = Field(1.0, ge=0)
    image: ScoreStats | None = None
    pixel: ScoreStats | None = None


class Thresholds(StrictModel):
    image: float = Field(gt=0)
    """Raw image-score threshold: score >= image -> FAIL at sensitivity 0.5."""
    image_method: Literal["quantile", "f1", "manual"] = "quantile"
    target_false_reject_rate: float | None = Field(None, ge=0, le=1)
    pixel: float = Field(gt=0)
    """Raw anomaly-map value above which a pixel belongs to a defect region."""
    pixel_method: Literal["quantile", "f1", "manual"] = "quantile"
    target_pixel_false_positive_rate: float | None = Field(None, ge=0, le=1)
    """For ``pixel_method`` quantile: the share of normal pixels the pixel threshold aims to let above it."""
    command_range: tuple[float, float] = (0.25, 4.0)
    """How far remote commands (set_threshold, set_sensitivity over MQTT) may move the effective image threshold:
    from ``command_range[0]`` to ``command_range[1]`` times ``image``. A command outside is refused, so nobody on the
    broker can switch inspection off (a huge threshold passes everything) or stop the line (a tiny one fails it)."""

    @model_validator(mode="after")
    def _check_command_range(self) -> Thresholds:
        low, high = self.command_range
        if not 0 < low <= 1 <= high < float("inf"):
            raise ValueError(f"command_range must be (low, high) with 0 < low <= 1 <= high, got {self.command_range}")
        return self


class QuantizationSpec(StrictModel):
    precision: Literal["fp32", "qdq"] = "fp32"
    bit_plan: dict[str, Literal["w4a8", "w8a8", "keep"]] = {}
    """Unit name -> chosen precision; 'keep' means FP16 on GPU, FP32 on CPU."""
    keep_fp32_nodes: list[str] = []
    """ONNX node names that must stay FP32 on every engine (e.g. the softmax path)."""
    weight_bytes: int | None = None
    table: str | None = None
    """Path (inside the repo's calibration/ folder or the bundle) of the per-layer HQS table."""
    target: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    """The engine the activation grids were calibrated for (``calibrate --target``)."""
    weight_codes: Literal[63, 127] = 63
    """Largest 8-bit weight code: 127 (the full range: TensorRT, or ONNX Runtime on a CPU with VNNI) or 63 (where
    ONNX Runtime's u8s8 kernels without VNNI saturate 16-bit pair sums). Bundles from before it was recorded: 63."""
    weight_codes_reason: str | None = None
    """Why ``weight_codes`` was chosen (the CPU flags seen, the target, or the user's choice)."""


class InputSizeRecord(StrictModel):
    """How ``train`` chose the input size (``edge_inspector.model.input_size``); the size itself is ``input``."""

    source: Literal["auto", "width set", "height set", "config"]
    """auto: both sides from the training images; 'width set' / 'height set': the other side from them; config: both
    set by the user."""
    reason: str
    pixel_budget: int = Field(gt=0)
    """``model.input_pixels`` at training."""
    warnings: list[str] = []
    """What looked risky in the images' sizes (mixed orientations, spread aspect ratios or sizes, a stretch)."""
    image_sizes: dict[str, int | float | list[int]]
    """Statistics of the training images' sizes: count, medians, aspect (h/w) median and 10-90 % range, portrait and
    landscape shares, scale spread, width and height ranges."""


class TrainingInfo(StrictModel):
    preset: str
    backbone: str
    attention: str = "halo"
    dataset: str
    data_fingerprint: str
    """sha256 over the sorted relative paths and sizes of the training images."""
    n_fit: int = Field(ge=0)
    n_holdout: int = Field(ge=0)
    epochs: int = Field(ge=0)
    seed: int
    duration_s: float | None = None
    input_size: InputSizeRecord | None = None
    """How the input size was chosen (absent in bundles exported from a checkpoint or written before it existed)."""


class ParitySpec(StrictModel):
    """Tolerances other engines (TensorRT) must meet against ONNX Runtime on ``calibration.npz``."""

    score_rtol: float = Field(0.05, gt=0)
    verdict_agreement: float = Field(0.99, gt=0, le=1)


class GraphSpec(StrictModel):
    file: str = "model.onnx"
    sha256: str
    opset: int


class Manifest(StrictModel):
    schema_version: int = SCHEMA_VERSION
    model_id: str
    """Human name plus a short hash of the graph, e.g. 'magnetic_tile-haloae-lite-3f2a9c1e'."""
    created: str
    edge_inspector_version: str
    graph: GraphSpec
    input: InputSpec
    outputs: OutputSpec = OutputSpec()
    score: ScoreSpec = ScoreSpec()
    thresholds: Thresholds
    quantization: QuantizationSpec = QuantizationSpec()
    training: TrainingInfo | None = None
    metrics: dict[str, float] = {}
    versions: dict[str, str] = {}
    parity: ParitySpec = ParitySpec()
    calibration_images: str | None = "calibration.npz"
