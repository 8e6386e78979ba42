"""What the target engine runs fast and exactly, turned into constraints on the bit plan.

* **ONNX Runtime (CPU)**: INT8 convs and matmuls run as integer kernels (the speed); an INT4-weight conv runs as
  dequantize + float conv, so 4 bits buy storage only (the engines widen INT4 codes to INT8 containers on load).
  A conv reading the 3-channel image stays FP32 (``pin_narrow_input_convs``). 8-bit weights take the full range
  -127..127 where the CPU has VNNI, else -63..63 (``engines.cpu_features``).
* **TensorRT (GPU)**: no INT4 convolution at all (INT4 is weight-only, for MatMul/Gemm); every unit here is a conv,
  so the per-unit decision is INT8 or FP16 (``keep``), and that is a speed decision: INT8 where it holds accuracy,
  FP16 where it does not. 8-bit weights take the full range (TensorRT accumulates in int32).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edge_inspector.engines.cpu_features import has_vnni
from edge_inspector.errors import ConfigError
from edge_inspector.quantization.fakequant import PRECISION_WEIGHT_BITS, qmax_for
from edge_inspector.quantization.units import QuantUnit, quant_modules

TARGETS = ("onnxruntime", "tensorrt")
WEIGHT_RANGES = ("auto", "full", "reduced")
KEEP_BITS = {"onnxruntime": 32, "tensorrt": 16}
"""What a ``keep`` unit's weights cost: FP32 on the CPU, FP16 on TensorRT."""
NARROW_INPUT_CHANNELS = 4
"""A (non-grouped) conv reading at most this many channels, the image's first conv, stays FP32 on ONNX Runtime."""
TENSORRT_NO_INT4 = "TensorRT: INT8 or FP16 (no INT4 convolution; INT4 is weight-only for MatMul/Gemm)"


@dataclass(frozen=True)
class TargetChoice:
    """The target-dependent choices of one calibration, as the plan and the manifest record them."""

    target: str
    weight_codes: int
    """Largest 8-bit weight code: 127 (full range) or 63 (reduced)."""
    weight_codes_reason: str
    candidates: tuple[str, ...]
    """The precisions a unit may get: w4a8 / w8a8 / keep (FP32) on ONNX Runtime, w8a8 / keep (FP16) on TensorRT."""


def weight_range(target: str, requested: str = "auto") -> tuple[bool, str]:
    """(full range?, why) for 8-bit weights on ``target``.

    Raises:
        ConfigError: an unknown target or range.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if requested not in WEIGHT_RANGES:
        raise ConfigError(f"weight range must be one of {', '.join(WEIGHT_RANGES)}, got {requested!r}")
    if requested != "auto":
        return requested == "full", f"asked for ({requested})"
    if target == "tensorrt":
        return True, "TensorRT accumulates INT8 products in int32"
    if has_vnni():
        return True, "this CPU has VNNI: ONNX Runtime's u8s8 kernels accumulate in int32"
    return False, "no VNNI on this CPU: ONNX Runtime's u8s8 kernels saturate int16 pair sums above code 64"


def apply_target(scorer: nn.Module, units: list[QuantUnit], target: str, requested_range: str = "auto") -> TargetChoice:
    """Set the weight range of every wrapped conv and pin the units the target cannot or should not run low."""
    full, reason = weight_range(target, requested_range)
    for module in quant_modules(scorer).values():
        module.full_range = full
    if target == "onnxruntime":
        pin_narrow_input_convs(scorer, units)
        candidates = ("w4a8", "w8a8", "keep")
    else:
        for unit in units:
            if unit.min_bits < 8:
                unit.min_bits, unit.pin_reason = 8, TENSORRT_NO_INT4
        candidates = ("w8a8", "keep")
    return TargetChoice(target, qmax_for(8, full), reason, candidates)


def pin_narrow_input_convs(scorer: nn.Module, units: list[QuantUnit]) -> list[str]:
    """Pin to ``keep`` the units whose conv reads few channels (the first conv on the 3-channel image); returns them.

    Why, for the ONNX Runtime target only: ORT's integer conv runs a 3-channel 3x3 stem 2.3-2.6x slower than its
    float conv; rewritten as a 2x2 conv on a space-to-depth input (12 channels) the integer kernel only matches the
    float 3x3 stem, before the extra space-to-depth op (``benchmarks/bench_int8_kernels.py``); and such a conv
    holds a few hundred weights, so INT8 saves neither time nor bytes. A plan with the Lite0 stem
    at W8A8 and block 0's depthwise conv in FP32 (an FP32 conv between two integer ones) ran at 0.77x FP32 latency,
    against 0.67x with both in FP32 (2 threads, one-off check).
    """
    modules = quant_modules(scorer)
    pinned = []
    for unit in units:
        convs = [modules[name].conv for name in unit.convs]
        if all(c.groups == 1 and c.in_channels <= NARROW_INPUT_CHANNELS for c in convs):
            unit.min_bits = PRECISION_WEIGHT_BITS["keep"]
            unit.pin_reason = f"reads {convs[0].in_channels} channels: FP32 on ONNX Runtime"
            pinned.append(unit.name)
    return pinned
