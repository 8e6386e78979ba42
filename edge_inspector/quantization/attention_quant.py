"""Integer attention: the matmuls of an attention block that multiply two activations (QK^T and AV) on 8-bit grids.

An attention block's q / k / v / out projections are convs (``QuantConv2d``, one unit per block); its two
activation x activation matmuls have no weights, so a plain wrapper has nothing to hold. ``AttentionQuant`` sits
beside the block (registered as its ``matmul_quant`` child, so no parameter of the block is renamed) and, while the
block runs, a torch-function mode puts both operands of every matmul of two activations on an 8-bit per-tensor grid:

* q and k of ``QK^T``, and v of ``AV``: the signed grid of an observed range (as conv activations);
* the attention probabilities of ``AV`` (a softmax output): the fixed range [0, 1], never clipped (a sharp
  attention row is what RAAD says matters): unsigned codes 0..255 on ONNX Runtime, signed 0..127 for TensorRT.

Which matmuls: any ``matmul`` inside the block whose operands are both computed from the block's input. A matmul
with a parameter (HaloAttention's relative-position logits, ``q @ rel_height.t()``) stays float, as does the
softmax and everything between. ``export.qdq.quantize_attention_matmuls`` writes the same grids into the graph
(Q/DQ on both inputs of the same MatMul nodes, found by the exporter's module scope), which ONNX Runtime runs as
``MatMulIntegerToFloat`` / ``QLinearMatMul`` and TensorRT as INT8 matmuls.

The mode is pushed only when something is asked of it (``calibrate``, ``quant`` with the block quantized, or a
capture of the attention probabilities for ``quantization.raad``): a float forward (the ONNX export) runs the block
untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edge_inspector.quantization.fakequant import ObserverKind, RangeObserver, fake_quant_act

MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)
SOFTMAXES = (torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax)
PASS_THROUGH = (torch.Tensor.to, torch.Tensor.float, torch.Tensor.type_as, torch.Tensor.contiguous)
"""Calls after which a softmax output is still the probabilities (dtype casts the block does for fp16 safety)."""
PROBABILITY_RANGE = 1.0

Capture = Callable[[nn.Module, torch.Tensor, tuple[int, ...]], None]
"""Called with (attention block, probabilities as the block computed them, the block's input shape)."""


class MatmulSite(nn.Module):
    """The grids of one activation x activation matmul: one observer per operand."""

    def __init__(self, observer: ObserverKind, percentile: float):
        super().__init__()
        self.a = RangeObserver(observer, percentile)
        self.b = RangeObserver(observer, percentile)
        self.a_probabilities = False
        """Operand a is a softmax output: fixed range [0, 1] (``fix_probability_range``)."""


class AttentionQuant(nn.Module):
    """The integer-matmul state of one attention block (observers per matmul site, mode, whether quantized).

    Args:
        sites: number of activation x activation matmuls the block runs per forward (``count_matmul_sites``).
        signed_probabilities: put the probabilities on the signed grid (TensorRT has no unsigned INT8).
    """

    def __init__(self, sites: int, observer: ObserverKind = "minmax", percentile: float = 99.99,
                 signed_probabilities: bool = False):
        super().__init__()
        self.sites = nn.ModuleList(MatmulSite(observer, percentile) for _ in range(sites))
        self.mode: Literal["float", "calibrate", "quant"] = "float"
        self.enabled = True
        """The block's unit is quantized (``units.apply_plan``): its matmuls are integer in ``quant`` mode."""
        self.signed_probabilities = signed_probabilities
        self.capture: Capture | None = None

    @property
    def quantized(self) -> bool:
        return self.mode == "quant" and self.enabled

    def active(self) -> bool:
        return self.mode == "calibrate" or self.quantized or self.capture is not None

    def operands(self, site: MatmulSite, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a`` and ``b`` as the matmul reads them: observed in ``calibrate`` mode (probabilities have their fixed
        range), on their grids when quantized."""
        if self.mode == "calibrate":
            if not site.a_probabilities:
                site.a.observe(a)
            site.b.observe(b)
        if not self.quantized:
            return a, b
        return tuple(fake_quant_act(x, o.scale(), o.unsigned) for x, o in ((a, site.a), (b, site.b)))


def fix_probability_range(site: MatmulSite, signed: bool) -> None:
    """Give operand a of ``site`` the fixed [0, 1] grid of attention probabilities (no observation needed)."""
    site.a_probabilities = True
    site.a.unsigned_clip = None if signed else PROBABILITY_RANGE
    site.a.amax.fill_(PROBABILITY_RANGE)
    site.a.batches.fill_(1)
    site.a.kind = "minmax"


class _BlockMatmuls(TorchFunctionMode):
    """Active while one attention block runs: finds its activation x activation matmuls and their operands."""

    def __init__(self, block: nn.Module, quant: AttentionQuant | None, block_input: torch.Tensor):
        super().__init__()
        self.block, self.quant, self.shape = block, quant, tuple(block_input.shape)
        self.constant: list[torch.Tensor] = [*block.parameters(), *block.buffers()]
        self.probabilities: list[torch.Tensor] = []
        self.found: list[bool] = []
        """Per activation matmul in call order: whether operand a was a softmax output."""

    def _is(self, tensor: object, group: list[torch.Tensor]) -> bool:
        return isinstance(tensor, torch.Tensor) and any(tensor is t for t in group)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS and len(args) == 2 and not any(self._is(a, self.constant) for a in args):
            return self._matmul(func, args[0], args[1], kwargs)
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if tensors and all(self._is(a, self.constant) for a in tensors):
            self.constant.append(out)  # a view or transpose of a parameter (rel_height.t()) is a parameter too
        elif func in SOFTMAXES or (func in PASS_THROUGH and self._is(args[0], self.probabilities)):
            self.probabilities.append(out)
        return out

    def _matmul(self, func, a: torch.Tensor, b: torch.Tensor, kwargs: dict) -> torch.Tensor:
        is_probabilities = self._is(a, self.probabilities)
        index = len(self.found)
        self.found.append(is_probabilities)
        if is_probabilities and self.quant is not None and self.quant.capture is not None:
            self.quant.capture(self.block, a.detach(), self.shape)
        if self.quant is not None and index < len(self.quant.sites):
            a, b = self.quant.operands(self.quant.sites[index], a, b)
        return func(a, b, **kwargs)


class EnterMatmuls:
    """Forward pre-hook of an attention block: pushes ``_BlockMatmuls`` when its ``AttentionQuant`` is active.
    A callable object (not a closure), so ``copy.deepcopy`` of a prepared model hooks the copy's state."""

    def __init__(self, quant: AttentionQuant):
        self.quant = quant
        self.stack: list[_BlockMatmuls] = []

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        if self.quant.active():
            mode = _BlockMatmuls(module, self.quant, inputs[0])
            mode.__enter__()
            self.stack.append(mode)


class LeaveMatmuls:
    """Forward hook (``always_call``: also when the block raises) that pops what ``EnterMatmuls`` pushed."""

    def __init__(self, enter: EnterMatmuls):
        self.enter = enter

    def __call__(self, module: nn.Module, inputs: tuple, output) -> None:
        if self.enter.stack:
            self.enter.stack.pop().__exit__(None, None, None)


@torch.no_grad()
def count_matmul_sites(block: nn.Module, example: torch.Tensor) -> list[bool]:
    """Run ``block`` once on ``example`` (its input); per activation x activation matmul in call order, whether its
    first operand is a softmax output."""
    mode = _BlockMatmuls(block, None, example)
    with mode:
        block(example)
    return mode.found


@torch.no_grad()
def attach_attention_quant(block: nn.Module, example: torch.Tensor, observer: ObserverKind = "minmax",
                           percentile: float = 99.99, signed_probabilities: bool = False) -> AttentionQuant | None:
    """Give ``block`` an ``AttentionQuant`` child (``matmul_quant``) and the hooks that apply it; returns it, or None
    when the block runs no activation x activation matmul (``BlockMeanAttention``)."""
    existing = getattr(block, "matmul_quant", None)
    if isinstance(existing, AttentionQuant):
        return existing
    found = count_matmul_sites(block, example)
    if not found:
        return None
    quant = AttentionQuant(len(found), observer, percentile, signed_probabilities)
    for site, probabilities in zip(quant.sites, found):
        if probabilities:
            fix_probability_range(site, signed_probabilities)
    block.add_module("matmul_quant", quant)
    enter = EnterMatmuls(quant)
    block.register_forward_pre_hook(enter)
    block.register_forward_hook(LeaveMatmuls(enter), always_call=True)
    return quant


def attention_quants(model: nn.Module) -> dict[str, AttentionQuant]:
    """Attention block name -> its ``AttentionQuant``, for a model that went through ``attach_attention_quant``."""
    suffix = ".matmul_quant"
    return {name[: -len(suffix)]: m for name, m in model.named_modules() if isinstance(m, AttentionQuant)}


@torch.no_grad()
def attach_to_blocks(model: nn.Module, blocks: list[str], example: torch.Tensor, observer: ObserverKind = "minmax",
                     percentile: float = 99.99, signed_probabilities: bool = False) -> dict[str, AttentionQuant]:
    """``attach_attention_quant`` for every named block, each on its input in one forward of ``model(example)``;
    returns the blocks that got one."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: inputs.setdefault(name, args[0])) for name in blocks]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    attached = {}
    for name in blocks:
        if name in inputs:
            quant = attach_attention_quant(model.get_submodule(name), inputs[name], observer, percentile,
                                           signed_probabilities)
            if quant is not None:
                attached[name] = quant
    return attached
