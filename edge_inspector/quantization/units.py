"""Quantization units of a model: which convs get one bit-width decision, and wrapping them for fake quantization.

A unit is every ``Conv2d`` on its own, except inside an attention block, whose q / kv / out projections (1x1 convs)
form one unit: they share a bit-width because they act together on the attention logits. A module counts as an
attention block when its class sets ``quant_group = True`` or its class name ends in ``Attention``. The block's two
matmuls of activations (QK^T, AV) have no weights: they follow the unit, on 8-bit grids whenever its projections are
quantized (``quantization.attention_quant``); softmax and the relative-position logits stay float.

Before wrapping, BatchNorm layers that directly follow a conv are folded into it (``model.batchnorm.fold_batchnorm``):
the exported ONNX graph carries the folded weights, and the fake-quant scales must be computed from the same numbers.
Which activation grid each wrapped conv reads and writes is decided in ``quantization.activation_grids``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from edge_inspector.model.location import LocationGaussian
from edge_inspector.quantization.attention_quant import AttentionQuant, attention_quants
from edge_inspector.quantization.fakequant import ObserverKind, Precision, QuantConv2d


@dataclass
class QuantUnit:
    """One bit-width decision.

    Attributes:
        name: the conv's qualified module name, or the attention block's for a group.
        convs: qualified names of the ``Conv2d`` modules it covers (in model order).
        kind: ``conv`` or ``attention``.
        params: number of weight elements (biases stay 32-bit and are not part of the bit budget).
        min_bits: 8 for units that must never go to 4 bits (first conv, last conv).
    """

    name: str
    convs: list[str]
    kind: str
    params: int
    min_bits: int = 4
    pin_reason: str = ""
    extra: dict = field(default_factory=dict)


def _is_attention(module: nn.Module) -> bool:
    return bool(getattr(module, "quant_group", False)) or type(module).__name__.endswith("Attention")


def _convs(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(name, conv or wrapper) in model order; the conv inside a wrapper is reported under the wrapper's name."""
    wrappers: set[str] = set()
    for name, module in model.named_modules(prefix=prefix):
        if isinstance(module, QuantConv2d):
            wrappers.add(name)
            yield name, module
        elif isinstance(module, nn.Conv2d) and name.rpartition(".")[0] not in wrappers:
            yield name, module


@torch.no_grad()
def unused_convs(model: nn.Module, example: torch.Tensor) -> tuple[str, ...]:
    """Convs that one forward pass of ``model`` on ``example`` never runs (e.g. the auto-encoder when the scorer
    ships the location head): they are not in the exported graph, so they are no quantization units."""
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: ran.add(n)) for name, m in _convs(model)]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return tuple(name for name, _ in _convs(model) if name not in ran)


def discover_units(model: nn.Module, skip: tuple[str, ...] = ()) -> list[QuantUnit]:
    """All quantization units of ``model`` in module order, first and last conv pinned to >= 8 bits.

    Args:
        skip: qualified-name prefixes to leave out entirely (e.g. training-only heads that are not exported).
    """
    units: list[QuantUnit] = []
    grouped: set[str] = set()
    for name, module in model.named_modules():
        if name and _is_attention(module) and not any(name.startswith(s) for s in skip):
            members = [n for n, _ in _convs(module, prefix=name)
                       if n not in grouped and not any(n.startswith(s) for s in skip)]
            if members:
                grouped.update(members)
                units.append(QuantUnit(name, members, "attention", 0))
    for name, _ in _convs(model):
        if name in grouped or any(name.startswith(s) for s in skip):
            continue
        units.append(QuantUnit(name, [name], "conv", 0))
    order = {n: i for i, (n, _) in enumerate(_convs(model))}
    units.sort(key=lambda u: order[u.convs[0]])
    modules = dict(model.named_modules())
    for unit in units:
        unit.params = sum(_conv_of(modules[c]).weight.numel() for c in unit.convs)
    if units:
        units[0].min_bits, units[0].pin_reason = 8, "first conv"
        units[-1].min_bits, units[-1].pin_reason = 8, "last conv"
    return units


def _conv_of(module: nn.Module) -> nn.Conv2d:
    return module.conv if isinstance(module, QuantConv2d) else module


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap_units(
    model: nn.Module,
    units: list[QuantUnit],
    observer: ObserverKind = "minmax",
    percentile: float = 99.99,
) -> dict[str, QuantConv2d]:
    """Replace each unit's convs by ``QuantConv2d`` wrappers in place; returns conv name -> wrapper."""
    wrapped: dict[str, QuantConv2d] = {}
    for unit in units:
        for name in unit.convs:
            module = model.get_submodule(name)
            if not isinstance(module, QuantConv2d):
                module = QuantConv2d(module, observer, percentile)
                _set_module(model, name, module)
            wrapped[name] = module
    return wrapped


def quant_modules(model: nn.Module) -> dict[str, QuantConv2d]:
    """Qualified name (of the original conv) -> wrapper, for a model that went through ``wrap_units``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantConv2d)}


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every wrapper and attention-matmul state to ``float``, ``calibrate`` or ``quant`` (and a quantized
    location head's input grid on in ``quant`` mode only)."""
    for module in [*quant_modules(model).values(), *attention_quants(model).values()]:
        module.mode = mode
    for module in model.modules():
        if isinstance(module, LocationGaussian):
            module.quantize_input = mode == "quant"


def modes_of(model: nn.Module) -> dict[str, str]:
    """The mode of every wrapper and attention-matmul state, by name (``restore_modes`` puts them back)."""
    return {name: m.mode for name, m in model.named_modules() if isinstance(m, (QuantConv2d, AttentionQuant))}


def restore_modes(model: nn.Module, modes: dict[str, str]) -> None:
    """Put back the modes ``modes_of`` returned."""
    for name, mode in modes.items():
        model.get_submodule(name).mode = mode


def apply_plan(model: nn.Module, units: list[QuantUnit], plan: dict[str, Precision]) -> None:
    """Give each wrapped conv the precision its unit has in ``plan`` (units missing from the plan stay ``keep``);
    an attention block's matmuls are integer exactly when its projections are quantized."""
    modules = quant_modules(model)
    matmuls = attention_quants(model)
    for unit in units:
        precision = plan.get(unit.name, "keep")
        for name in unit.convs:
            modules[name].precision = precision
        if unit.name in matmuls:
            matmuls[unit.name].enabled = precision != "keep"
