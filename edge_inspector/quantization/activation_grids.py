"""Activation grids that follow the graph: which conv outputs go on the unsigned grid, which quantizers share one
range, and which module outputs are quantized once for all their readers.

All three read one traced forward pass (``_trace_activations``: who produced and who read each tensor) and set the
wrapped convs' observers, before or right after calibration:

* ``mark_unsigned_activations``: a conv output read only by a ReLU / ReLU6 goes on the unsigned grid (see
  ``quantization.fakequant`` for why);
* ``tie_activation_ranges``: quantizers that see the same tensor get one range, so the QDQ graph quantizes it once;
* ``share_input_grids``: a module output read by quantized convs and by other operations (a residual block's output)
  is put on the convs' grid for every reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edge_inspector.quantization.fakequant import QuantConv2d, fake_quant_act
from edge_inspector.quantization.units import modes_of, quant_modules, restore_modes, set_mode


@dataclass
class _ActivationTrace:
    """Who produced and who read each tensor in one forward pass (tensor identity), for the activation grids."""

    produced: dict[int, str] = field(default_factory=dict)
    """tensor id -> '<conv>:out' of the wrapped conv that produced it."""
    conv_readers: dict[int, list[str]] = field(default_factory=dict)
    """tensor id -> wrapped convs that read it."""
    reader_clips: dict[int, list[float | None]] = field(default_factory=dict)
    """tensor id -> one entry per torch function call that read it: the upper bound of a ReLU-like call (ReLU,
    ReLU6, hardtanh / clamp from 0), None for any other call."""
    relu_of: dict[int, int] = field(default_factory=dict)
    """output id of a ReLU-like call -> id of the tensor it clipped."""
    module_outputs: dict[int, str] = field(default_factory=dict)
    """tensor id -> the innermost module (not a wrapped conv) that returned it."""


def _relu_clip(func, args: tuple, kwargs: dict) -> float | None:
    """Upper bound of a ReLU-like call on ``args[0]`` (inf for a plain ReLU), None for anything else."""
    import torch.nn.functional as F

    if func in (F.relu, torch.relu, torch.Tensor.relu):
        return float("inf")
    if func is F.relu6:
        return 6.0
    def argument(position: int, name: str, default=None):
        return args[position] if len(args) > position else kwargs.get(name, default)

    if func is F.hardtanh:  # nn.ReLU6 calls hardtanh(x, 0, 6)
        low, high = argument(1, "min_val", -1.0), argument(2, "max_val", 1.0)
    elif func in (torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip):
        low, high = argument(1, "min"), argument(2, "max", float("inf"))
    else:
        return None
    numbers = all(isinstance(v, (int, float)) for v in (low, high))  # a tensor bound is not a ReLU we can see
    return float(high) if numbers and low == 0 else None


@torch.no_grad()
def _trace_activations(model: nn.Module, example: torch.Tensor) -> _ActivationTrace:
    """One forward in ``float`` mode (observers untouched) recording tensor producers and readers: module hooks
    for the wrapped convs, a torch-function mode for everything else (HaloAE's forward uses Python-int shapes,
    which torch.fx refuses). Calls inside a wrapped conv (its own pad and conv) are the conv's read, not others'."""
    from torch.overrides import TorchFunctionMode

    modules = quant_modules(model)
    trace = _ActivationTrace()
    alive: list[torch.Tensor] = []  # keeps tensors alive so their ids stay unique during the pass
    inside_conv = [0]

    class Readers(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if not isinstance(out, torch.Tensor) or inside_conv[0]:  # .shape, .dim(): metadata, not values
                return out
            clip = _relu_clip(func, args, kwargs)
            flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
            for tensor in (a for a in flat if isinstance(a, torch.Tensor)):
                alive.append(tensor)
                trace.reader_clips.setdefault(id(tensor), []).append(clip)
            if clip is not None and args and isinstance(args[0], torch.Tensor) and out is not args[0]:
                alive.append(out)
                trace.relu_of[id(out)] = id(args[0])
            return out

    def on_input(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            alive.append(inputs[0])
            trace.conv_readers.setdefault(id(inputs[0]), []).append(name)
            inside_conv[0] += 1

        return hook

    def on_output(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            inside_conv[0] -= 1
            alive.append(output)
            trace.produced[id(output)] = f"{name}:out"

        return hook

    def on_module_output(name: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            if isinstance(output, torch.Tensor) and not inside_conv[0]:
                alive.append(output)
                trace.module_outputs.setdefault(id(output), name)  # hooks fire innermost first

        return hook

    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(on_input(name)))
        handles.append(module.register_forward_hook(on_output(name)))
    wrapped_parts = {f"{name}.{child}" for name in modules for child, _ in modules[name].named_modules() if child}
    for name, module in model.named_modules():
        if name and name not in modules and name not in wrapped_parts:
            handles.append(module.register_forward_hook(on_module_output(name)))
    modes = modes_of(model)
    set_mode(model, "float")
    try:
        with Readers():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        restore_modes(model, modes)
    return trace


def _unsigned_outputs(trace: _ActivationTrace) -> dict[int, float]:
    """Conv-output tensor id -> clip, for outputs whose every reader is the same ReLU-like clip from 0."""
    found = {}
    for tensor_id in trace.produced:
        if tensor_id in trace.conv_readers:  # a conv reading it directly sees its negative values too
            continue
        clips = set(trace.reader_clips.get(tensor_id, []))
        if len(clips) == 1 and None not in clips:
            found[tensor_id] = clips.pop()
    return found


@torch.no_grad()
def mark_unsigned_activations(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Put every conv output read only by a ReLU / ReLU6 on the unsigned activation grid (before calibration, so
    its observer measures the clipped values); returns those convs. ``tie_activation_ranges`` then gives the convs
    that read the activation the same grid. See ``fakequant`` for why."""
    modules = quant_modules(model)
    trace = _trace_activations(model, example)
    marked = []
    for tensor_id, clip in _unsigned_outputs(trace).items():
        name = trace.produced[tensor_id].rpartition(":")[0]
        modules[name].out_observer.unsigned_clip = clip
        marked.append(name)
    return marked


@torch.no_grad()
def tie_activation_ranges(model: nn.Module, example: torch.Tensor) -> list[list[str]]:
    """Give one activation range to every group of quantizers that see the same tensor; returns the groups.

    A conv's output feeding another conv directly (``reduce`` -> q/k/v projections, MBConv project -> expand), or
    one tensor feeding several convs, would otherwise be quantized twice with different scales: two Q/DQ pairs
    back to back, which ONNX Runtime cannot fuse into integer convs (measured: a third of the convs stayed float).
    With one range per tensor the export writes a single Q/DQ pair and both sides stay exact (re-quantizing on the
    same grid changes nothing). The group's range is the widest of its members'. A conv output on the unsigned grid
    (``mark_unsigned_activations``) is grouped with the convs reading its ReLU: the ReLU changes nothing on that
    grid, so they share its unsigned grid too.
    """
    modules = quant_modules(model)
    trace = _trace_activations(model, example)
    # the ReLU output of a conv output on the unsigned grid is that same grid
    relu_of_unsigned = {relu: trace.produced[source] for relu, source in trace.relu_of.items()
                        if source in trace.produced and _observer(modules, trace.produced[source]).unsigned}
    parent: dict[str, str] = {}

    def find(slot: str) -> str:
        while parent.setdefault(slot, slot) != slot:
            slot = parent[slot]
        return slot

    for tensor_id, names in trace.conv_readers.items():
        producer = trace.produced.get(tensor_id) or relu_of_unsigned.get(tensor_id)
        slots = [f"{n}:in" for n in dict.fromkeys(names)] + ([producer] if producer else [])
        for slot in slots[1:]:
            parent[find(slot)] = find(slots[0])
    groups: dict[str, list[str]] = {}
    for slot in list(parent):
        groups.setdefault(find(slot), []).append(slot)
    tied = [sorted(g) for g in groups.values() if len(g) > 1]
    for group in tied:
        observers = [_observer(modules, slot) for slot in group]
        clip = max((o.unsigned_clip for o in observers if o.unsigned), default=None)
        widest = max(o.amax for o in observers)
        for o in observers:
            o.amax.copy_(widest)
            if clip is not None:
                o.unsigned_clip = clip
    return tied


class SharedInputQuant:
    """Forward hook of a module whose output quantized convs read *and* other operations read (a residual block's
    output: the next block's first conv and its skip add): in ``quant`` mode the output itself goes onto the
    convs' input grid, so every reader sees the same 8-bit tensor, as in the QDQ graph, where every reader then
    reads the one Q/DQ pair (``export.qdq``, ``ConvQuant.input_shared``).

    Why: with only the conv's input quantized, ONNX Runtime ran each residual add in float between a
    DequantizeLinear per input and a QuantizeLinear (7 adds, 17 Q/DQ nodes on the Lite0 backbone); with the shared
    grid they become integer ``QLinearAdd`` nodes. TensorRT fuses a residual add into an INT8 conv only when the
    add's inputs are quantized like this. A callable object rather than a closure, so ``copy.deepcopy`` of a
    prepared model points the copy's hook at the copy's convs."""

    def __init__(self, readers: list[QuantConv2d]):
        self.readers = readers

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        reader = next((r for r in self.readers if r.quantized), None)
        if reader is None:
            return None
        return fake_quant_act(output, reader.in_observer.scale(), reader.in_observer.unsigned)


@torch.no_grad()
def share_input_grids(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Hook ``SharedInputQuant`` onto every module whose output a wrapped conv reads and something else reads too,
    and flag those convs (``QuantConv2d.shares_input_grid``); returns the hooked modules. Run after
    ``tie_activation_ranges`` (the readers must share one range). A tensor that no module returns (computed
    inside a forward) keeps the conv-only quantization, on both sides."""
    modules = quant_modules(model)
    trace = _trace_activations(model, example)
    hooked = []
    for tensor_id, names in trace.conv_readers.items():
        producer = trace.module_outputs.get(tensor_id)
        if tensor_id in trace.produced or not trace.reader_clips.get(tensor_id) or producer is None:
            continue
        readers = [modules[n] for n in dict.fromkeys(names)]
        model.get_submodule(producer).register_forward_hook(SharedInputQuant(readers))
        for reader in readers:
            reader.shares_input_grid = True
        hooked.append(producer)
    return hooked


def _observer(modules: dict[str, QuantConv2d], slot: str):
    name, _, side = slot.rpartition(":")
    return modules[name].in_observer if side == "in" else modules[name].out_observer
