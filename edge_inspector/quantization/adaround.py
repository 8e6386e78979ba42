"""AdaRound for the 4-bit units: learn, per weight, whether to round down or up, so the conv's output matches FP32.

Round-to-nearest minimises each weight's own error; what matters is the conv's output. AdaRound (Nagel et al.,
ICML 2020) learns a soft rounding ``h(V)`` in [0, 1] per weight (a rectified sigmoid) and minimises

    || conv(x_q; s * clamp(floor(W / s) + h(V), -qmax, qmax)) - conv_fp32(x) ||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)

where ``x_q`` is the conv's input in the quantized model (every earlier unit already quantized and rounded:
layers are done in model order, so each one also corrects what came before it) and ``x`` its input in the FP32
model; the regulariser's ``beta`` anneals from 20 to 2 and pushes every ``h`` to 0 or 1. The result is then
*baked*: the conv's float weights are set to the rounded grid values, which round-to-nearest reproduces exactly
(each channel's largest weight keeps its nearest rounding, so the channel's scale does not move). So the QDQ export,
QAT and the engines need nothing new.

Only ``w4a8`` units: at 8 bits nearest rounding is already within a few tenths of a step of the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from edge_inspector.quantization.fakequant import QuantConv2d, fake_quant_act, weight_scale
from edge_inspector.quantization.units import QuantUnit, quant_modules, set_mode

ZETA, GAMMA = 1.1, -0.1
"""Stretch of the rectified sigmoid (AdaRound's values), so h reaches exactly 0 and 1."""


@dataclass
class AdaRoundOptions:
    steps: int = 500
    lr: float = 1e-2
    weight: float = 0.01
    """lambda of the rounding regulariser."""
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    """Share of the steps without the regulariser (reconstruction only)."""
    images: int = 16
    batch: int = 4
    seed: int = 0


@dataclass
class AdaRoundReport:
    """Per conv: the output error (mean squared, relative to the FP32 output's) with nearest and learned rounding,
    and the share of weights rounded the other way than nearest."""

    convs: dict[str, dict[str, float]] = field(default_factory=dict)


def _soft(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _capture(scorer: nn.Module, module: QuantConv2d, images: torch.Tensor, mode: str) -> torch.Tensor:
    """The input ``module`` receives when ``scorer`` runs ``images`` in ``mode``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    set_mode(scorer, mode)
    try:
        with torch.no_grad():
            for start in range(0, len(images), 4):
                scorer(images[start : start + 4])
    finally:
        handle.remove()
    return torch.cat(seen)


def _rounded(weight: torch.Tensor, scale: torch.Tensor, qmax: int, up: torch.Tensor) -> torch.Tensor:
    view = scale.view(-1, *([1] * (weight.dim() - 1)))
    return view * torch.clamp(torch.floor(weight / view) + up, -qmax, qmax)


def round_conv(scorer: nn.Module, name: str, images: torch.Tensor, options: AdaRoundOptions) -> dict[str, float]:
    """Learn the rounding of one 4-bit conv of ``scorer`` (prepared, planned) and bake it; returns its figures."""
    module = quant_modules(scorer)[name]
    x_fp32 = _capture(scorer, module, images, "float")
    x_q = fake_quant_act(_capture(scorer, module, images, "quant"), module.in_observer.scale(),
                         module.in_observer.unsigned)
    conv = module.conv
    with torch.no_grad():
        target = conv(x_fp32)
    w = conv.weight.detach()
    scale = weight_scale(w, module.weight_bits, module.full_range)
    view = scale.view(-1, *([1] * (w.dim() - 1)))
    qmax = module.weight_qmax
    rest = w / view - torch.floor(w / view)
    # V such that h(V) starts at the fractional part: the start is round-to-nearest's neighbourhood
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest.clamp(0.01, 0.99) - GAMMA) - 1))
    fixed = w.abs().flatten(1) == w.abs().flatten(1).amax(1, keepdim=True)  # each channel's largest: nearest
    fixed = fixed.view_as(w)
    nearest_up = (torch.round(w / view) > torch.floor(w / view)).float()
    optimizer = torch.optim.Adam([v], lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    denominator = target.square().mean().clamp(min=1e-12)

    def output(up: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        weight = _rounded(w, scale, qmax, torch.where(fixed, nearest_up, up))
        return functional_call(conv, {"weight": weight, **({"bias": conv.bias} if conv.bias is not None else {})},
                               (x_q[rows],))

    for step in range(options.steps):
        rows = torch.randint(0, len(x_q), (min(options.batch, len(x_q)),), generator=generator)
        loss = F.mse_loss(output(_soft(v), rows), target[rows]) / denominator
        progress = step / max(options.steps, 1)
        if progress >= options.warmup:
            beta = options.beta[1] + (options.beta[0] - options.beta[1]) * (1 - (progress - options.warmup) /
                                                                             (1 - options.warmup))
            loss = loss + options.weight * (1 - (2 * _soft(v) - 1).abs().pow(beta)).sum() / v.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = (_soft(v) >= 0.5).float()
        everything = torch.arange(len(x_q))
        before = float(F.mse_loss(output(nearest_up, everything), target) / denominator)
        after = float(F.mse_loss(output(learned, everything), target) / denominator)
        if after < before:  # bake: the float weight becomes its rounded grid value
            conv.weight.copy_(_rounded(w, scale, qmax, torch.where(fixed, nearest_up, learned)))
    flipped = float(((learned != nearest_up) & ~fixed).float().mean())
    return {"error_nearest": before, "error_adaround": min(after, before), "flipped": flipped,
            "kept": float(after < before)}


def adaround(scorer: nn.Module, units: list[QuantUnit], plan: dict[str, str], calibration: np.ndarray,
             options: AdaRoundOptions, progress: bool = False) -> AdaRoundReport:
    """AdaRound every conv of the ``w4a8`` units of ``plan``, in model order (the plan must be applied)."""
    images = torch.from_numpy(np.ascontiguousarray(calibration[: options.images]))
    names = [c for u in units if plan.get(u.name) == "w4a8" for c in u.convs]
    report = AdaRoundReport()
    for name in tqdm(names, desc="AdaRound", disable=not progress):
        report.convs[name] = round_conv(scorer, name, images, options)
    set_mode(scorer, "quant")
    return report
