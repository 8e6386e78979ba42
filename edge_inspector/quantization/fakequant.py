"""Fake quantization for HQS units: the torch side of the QDQ graph, with straight-through gradients.

Numerics (chosen to match what ONNX Runtime and TensorRT execute):

* weights: per-output-channel symmetric, ``scale_c = max|w_c| / qmax``, ``q = clamp(round(w / scale), -qmax, qmax)``
  with ``qmax = 7`` for 4 bits and, for 8 bits, ``qmax = 127`` (the full range) where the target's kernels take it
  or ``qmax = 63`` (the "reduced range") where they saturate: ONNX Runtime on x86 CPUs without VNNI runs QDQ convs
  as uint8 x int8 with ``vpmaddubsw``, whose int16 pair sums saturate for |w| > 64 (measured on an AVX2 CPU:
  outputs off by up to 23 steps with qmax 127, exact with 63); VNNI's ``vpdpbusd`` and TensorRT accumulate in
  int32 and take all 8 bits (``QuantConv2d.full_range``, chosen by ``quantization.weight_range``). 4-bit codes can
  never saturate;
* activations: 8-bit per tensor, the range from a calibration observer (``minmax`` or ``percentile`` of ``|x|``).
  Signed tensors use a symmetric grid (int8 codes, zero point 0, what TensorRT accepts; the same grid as uint8 with
  zero point 128, what ONNX Runtime's fast x86 kernels take). A conv output whose only reader is a ReLU / ReLU6,
  and the inputs of the convs that read that activation, use the *unsigned* grid instead (uint8 codes 0..255, zero
  point 0, range ``[0, min(observed, clip)]``): the quantizer then does the activation's clipping itself, so the
  8 bits cover only the values that survive it (a signed grid spends half its codes on negatives the ReLU drops), and
  ONNX Runtime removes the ``DQ -> Clip -> Q`` between two integer convs (measured on HaloAE-lite's Lite0 backbone:
  41 DequantizeLinear, 31 Clip and 37 QuantizeLinear nodes ran in float between the QLinearConvs, 60% of the integer
  graph's time, and made W8A8 slower than FP32). TensorRT has no unsigned INT8: its preparation puts these tensors
  on the signed grid with twice the step (``engines.trt_prep``);
* bias: int32 on the grid ``scale_x * scale_w`` (what the integer conv kernels of ONNX Runtime accumulate in).

``torch.round`` and ONNX ``QuantizeLinear`` both round half to even, so a value lands on the same grid point.
Gradients pass straight through the rounding; activations outside the clip range get none (the usual STE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

Precision = Literal["w4a8", "w8a8", "keep"]
PRECISION_WEIGHT_BITS: dict[str, int] = {"w4a8": 4, "w8a8": 8, "keep": 32}
ACT_BITS = 8
ACT_QMIN, ACT_QMAX = -128, 127
"""Codes of the signed activation grid; the scale maps the observed range to 127 and -128 is kept, as
``QuantizeLinear`` saturates there (the uint8 form of the same grid is ``code + 128``)."""
ACT_UQMAX = 255
"""Largest code of the unsigned activation grid (codes 0..255, zero point 0)."""
BIAS_QMAX = 2**31 - 128
"""Largest int32 bias code that float32 represents exactly (so torch and ONNX clip to the same number)."""
MIN_WEIGHT_RANGE = 1e-6
"""Floor on a channel's ``max|w|``: an all-zero channel keeps a scale that leaves its bias representable in int32."""
ObserverKind = Literal["minmax", "percentile"]


WEIGHT_QMAX = {4: 7, 8: 63}
"""Largest weight code per bit-width (the smallest is its negative); 8 bits in the reduced range, see above."""
FULL_RANGE_QMAX = 127
"""Largest 8-bit weight code where the kernels take the full range."""


def qmax_for(bits: int, full_range: bool = False) -> int:
    """Largest code of the symmetric ``bits``-bit weight grid (8 bits: 127 with ``full_range``, else 63)."""
    if bits not in WEIGHT_QMAX:
        raise ValueError(f"weight bits must be 4 or 8, got {bits}")
    return FULL_RANGE_QMAX if full_range and bits == 8 else WEIGHT_QMAX[bits]


def weight_scale(weight: torch.Tensor, bits: int, full_range: bool = False) -> torch.Tensor:
    """Per-output-channel symmetric scale (shape ``[out_channels]``); never zero, so all-zero channels stay zero."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return torch.clamp(amax, min=MIN_WEIGHT_RANGE) / qmax_for(bits, full_range)


def quantize_weight(weight: torch.Tensor, bits: int, full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (as float tensor holding whole numbers) and per-channel scales of ``weight``."""
    scale = weight_scale(weight, bits, full_range)
    view = scale.view(-1, *([1] * (weight.dim() - 1)))
    qmax = qmax_for(bits, full_range)
    return torch.clamp(torch.round(weight.detach() / view), -qmax, qmax), scale


def fake_quant_weight(weight: torch.Tensor, bits: int, full_range: bool = False) -> torch.Tensor:
    """``weight`` snapped to its per-channel grid; the gradient flows to ``weight`` unchanged (STE)."""
    codes, scale = quantize_weight(weight, bits, full_range)
    snapped = codes * scale.view(-1, *([1] * (weight.dim() - 1)))
    return weight + (snapped - weight).detach()


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor, unsigned: bool = False) -> torch.Tensor:
    """Per-tensor 8-bit fake quantization on the signed (-128..127) or unsigned (0..255) grid of ``scale``; STE
    inside the clip range, zero gradient outside."""
    low, high = (0, ACT_UQMAX) if unsigned else (ACT_QMIN, ACT_QMAX)
    clipped = torch.maximum(torch.minimum(x, scale * high), scale * low)
    snapped = torch.clamp(torch.round(x / scale), low, high) * scale
    return clipped + (snapped - clipped).detach()


def fake_quant_bias(bias: torch.Tensor, act_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Bias snapped to the int32 grid ``act_scale * w_scale`` (per channel), as integer kernels hold it."""
    grid = act_scale * w_scale
    snapped = torch.clamp(torch.round(bias.detach() / grid), -BIAS_QMAX, BIAS_QMAX) * grid
    return bias + (snapped - bias).detach()


class RangeObserver(nn.Module):
    """Collects the symmetric range ``max|x|`` of an activation during calibration.

    ``minmax`` keeps the running maximum of ``|x|``; ``percentile`` averages, over batches, the given percentile of
    ``|x|`` (robust to a few outliers, which otherwise waste most of the 8-bit grid).

    ``unsigned_clip`` (set before calibration, see ``activation_grids.mark_unsigned_activations``): the tensor is read only
    through a ReLU clipping it to ``[0, unsigned_clip]``, so the observer measures the clipped values and the scale
    is that of the unsigned grid.
    """

    def __init__(self, kind: ObserverKind = "minmax", percentile: float = 99.99):
        super().__init__()
        if kind not in ("minmax", "percentile"):
            raise ValueError(f"observer must be 'minmax' or 'percentile', got {kind!r}")
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.kind = kind
        self.percentile = percentile
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.unsigned_clip: float | None = None

    @property
    def unsigned(self) -> bool:
        return self.unsigned_clip is not None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if self.unsigned:
            x = x.clamp(0, self.unsigned_clip)
        values = x.abs().flatten().float()
        if self.kind == "minmax":
            self.amax.copy_(torch.maximum(self.amax, values.max()))
        else:
            if values.numel() > 1_000_000:  # quantile() refuses huge inputs; a strided sample keeps the tail shape
                values = values[:: values.numel() // 1_000_000 + 1]
            current = torch.quantile(values, self.percentile / 100.0)
            n = self.batches.item()
            self.amax.copy_((self.amax * n + current) / (n + 1))
        self.batches += 1

    def scale(self) -> torch.Tensor:
        """Scale of the 8-bit grid; raises if nothing was observed (an uncalibrated unit must not export)."""
        if self.batches.item() == 0:
            raise RuntimeError("activation range was never observed: run calibration images through the model first")
        return torch.clamp(self.amax, min=1e-8) / (ACT_UQMAX if self.unsigned else ACT_QMAX)


@dataclass
class ActScales:
    """Frozen input/output activation scales of one quantized conv (what the QDQ export writes)."""

    input: float
    output: float
    input_unsigned: bool = False
    output_unsigned: bool = False


class QuantConv2d(nn.Module):
    """A ``Conv2d`` whose weights, bias, input and output are fake-quantized according to ``precision``.

    Modes: ``float`` (plain conv, the FP32 reference), ``calibrate`` (plain conv, observers record input and output
    ranges), ``quant`` (fake quantization with frozen ranges). ``precision == "keep"`` is always a plain conv.
    """

    def __init__(self, conv: nn.Conv2d, observer: ObserverKind = "minmax", percentile: float = 99.99):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError("only zero-padded convs can be exported as QDQ (ONNX Conv pads with zeros)")
        self.conv = conv
        self.precision: Precision = "w8a8"
        self.mode: Literal["float", "calibrate", "quant"] = "float"
        self.in_observer = RangeObserver(observer, percentile)
        self.out_observer = RangeObserver(observer, percentile)
        self.full_range = False
        """8-bit weights use codes -127..127 (the target's kernels take them), else -63..63."""
        self.shares_input_grid = False
        """Every reader of this conv's input reads it quantized (``activation_grids.share_input_grids``)."""

    @property
    def weight_bits(self) -> int:
        return PRECISION_WEIGHT_BITS[self.precision]

    @property
    def weight_qmax(self) -> int:
        return qmax_for(self.weight_bits, self.full_range)

    @property
    def quantized(self) -> bool:
        return self.mode == "quant" and self.precision != "keep"

    def act_scales(self) -> ActScales:
        return ActScales(float(self.in_observer.scale()), float(self.out_observer.scale()),
                         self.in_observer.unsigned, self.out_observer.unsigned)

    def quantized_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(integer weight codes, per-channel weight scale, snapped bias or None) exactly as the forward uses them."""
        codes, w_scale = quantize_weight(self.conv.weight, self.weight_bits, self.full_range)
        bias = None
        if self.conv.bias is not None:
            bias = fake_quant_bias(self.conv.bias, self.in_observer.scale(), w_scale).detach()
        return codes, w_scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrate":
            self.in_observer.observe(x)
            y = self.conv(x)
            self.out_observer.observe(y)
            return y
        if not self.quantized:
            return self.conv(x)
        s_in = self.in_observer.scale()
        params = {"weight": fake_quant_weight(self.conv.weight, self.weight_bits, self.full_range)}
        if self.conv.bias is not None:
            params["bias"] = fake_quant_bias(self.conv.bias, s_in,
                                             weight_scale(self.conv.weight, self.weight_bits, self.full_range))
        # The conv's own forward, with the snapped parameters: subclasses that pad first (TF 'SAME') keep doing so;
        # zero padding commutes with the (zero-point 0) input quantization, as in the ONNX Pad -> Q/DQ -> Conv.
        y = functional_call(self.conv, params, (fake_quant_act(x, s_in, self.in_observer.unsigned),))
        return fake_quant_act(y, self.out_observer.scale(), self.out_observer.unsigned)
