"""Folding eval-mode BatchNorm into the conv before it: the same outputs with fewer ops.

The frozen backbone is folded when it is built (fewer ops in training and in the exported graph); quantization
folds the rest of the model before it computes weight grids (the "frozen BN" of QAT), so that torch and the
exported ONNX graph quantize the same weights.
"""

from __future__ import annotations

import torch
from torch import nn


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, bn) qualified-name pairs where a BN consumed exactly the tensor a conv produced, seen in one forward.

    Hooks instead of torch.fx: HaloAE's forward uses static shapes as Python ints, which symbolic tracing refuses.
    """
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(
                lambda m, i, name=name: pairs.append((produced[id(i[0])], name)) if id(i[0]) in produced else None))
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(pairs))


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-3) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm that directly follows a conv into that conv, in place; returns the pairs.

    The BN is replaced by ``nn.Identity``. This is the "frozen BN" of QAT: exact in eval mode, and what the ONNX
    exporter does anyway, so torch and ONNX quantize the same weights.

    Args:
        example: an input for ``model(example)``; the output must not change (checked, relative to its scale).

    Raises:
        RuntimeError: folding changed the output (a conv output was also used elsewhere than its BN).
    """
    model.eval()
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    reference = model(example)
    pairs = _conv_bn_pairs(model, example)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(factor.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + bn.bias
        conv.bias = nn.Parameter(new_bias)
        _replace(model, bn_name, nn.Identity())
    _check_same(reference, model(example), atol)
    return pairs


def _check_same(before, after, atol: float) -> None:
    first = before[0] if isinstance(before, (tuple, list)) else before
    second = after[0] if isinstance(after, (tuple, list)) else after
    err = float((first - second).abs().max() / first.abs().max().clamp(min=1e-12))
    if err > atol:
        raise RuntimeError(f"folding BatchNorm changed the model output (relative error {err:.2e})")
