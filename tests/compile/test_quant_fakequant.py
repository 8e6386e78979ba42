"""Fake-quant numerics: grids, scales, straight-through gradients, observers, BN folding and unit discovery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_inspector.quantization.fakequant import (
    QuantConv2d,
    RangeObserver,
    fake_quant_act,
    fake_quant_weight,
    quantize_weight,
)
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.quantization.units import apply_plan, discover_units, set_mode, wrap_units
from tests.compile.quant_nets import make_tiny_net


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("bits,full_range,qmax", [(4, False, 7), (8, False, 63), (4, True, 7), (8, True, 127)])
def test_weight_grid_is_symmetric_per_channel(bits, full_range, qmax):
    w = torch.randn(5, 3, 3, 3)
    w[2] *= 10  # channels with very different ranges get their own scale
    codes, scale = quantize_weight(w, bits, full_range)
    assert codes.abs().max() == qmax
    assert torch.equal(codes, codes.round())
    for c in range(5):  # each channel's largest weight maps exactly to +-qmax
        assert torch.isclose(scale[c], w[c].abs().max() / qmax)
    snapped = fake_quant_weight(w, bits, full_range)
    err = (snapped - w).abs().flatten(1).amax(1)
    assert torch.all(err <= scale / 2 + 1e-7)
    assert len(torch.unique(snapped[0])) <= 2 * qmax + 1


def test_zero_channel_stays_zero():
    w = torch.randn(3, 2, 1, 1)
    w[1] = 0
    assert torch.all(fake_quant_weight(w, 4)[1] == 0)


def test_weight_ste_passes_gradient_unchanged():
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    (fake_quant_weight(w, 4) * g).sum().backward()
    assert torch.allclose(w.grad, g)


def test_activation_rounds_half_to_even_and_clips_gradient():
    scale = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, -0.25, 100.0, -100.0, 1.1], requires_grad=True)
    y = fake_quant_act(x, scale)
    # 0.25/0.5 = 0.5 -> 0 (even), 0.75/0.5 = 1.5 -> 2, clip at 127 * 0.5 and -128 * 0.5 (QuantizeLinear's int8)
    assert y.tolist() == [0.0, 1.0, -0.0, 63.5, -64.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_unsigned_activation_grid_spends_all_256_codes_on_the_relu_range():
    scale = torch.tensor(0.5)
    x = torch.tensor([-3.0, 0.25, 0.75, 100.0, 127.6, 200.0], requires_grad=True)
    y = fake_quant_act(x, scale, unsigned=True)
    # negatives go to 0 (the ReLU), half to even, clip at 255 * 0.5 (uint8, zero point 0)
    assert y.tolist() == [0.0, 0.0, 1.0, 100.0, 127.5, 127.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    observer = RangeObserver("minmax")
    observer.unsigned_clip = 6.0  # read through a ReLU6: only [0, 6] matters
    observer.observe(torch.tensor([-20.0, 3.0, 9.0]))
    assert observer.amax.item() == 6.0 and observer.scale().item() == pytest.approx(6.0 / 255)


def test_observers_minmax_and_percentile():
    x = torch.linspace(-1, 1, 10001)
    x[0] = -50.0  # one outlier
    mm, pc = RangeObserver("minmax"), RangeObserver("percentile", 99.0)
    mm.observe(x)
    pc.observe(x)
    assert mm.amax.item() == 50.0
    assert 0.97 < pc.amax.item() < 1.0
    with pytest.raises(RuntimeError, match="never observed"):
        RangeObserver().scale()
    with pytest.raises(ValueError):
        RangeObserver("entropy")


def test_fold_batchnorm_is_exact_in_eval():
    net = make_tiny_net()
    x = torch.randn(2, 3, 12, 12)
    ref = net(x)
    pairs = fold_batchnorm(net, x)
    assert pairs == [("stem", "stem_bn")]
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_units_group_attention_and_pin_first_and_last():
    net = make_tiny_net()
    units = discover_units(net)
    assert [u.name for u in units] == ["stem", "body.0", "body.2", "attn", "head"]
    attn = units[3]
    assert attn.kind == "attention" and attn.convs == ["attn.to_q", "attn.to_kv", "attn.to_out"]
    assert attn.params == 8 * 8 + 16 * 8 + 8 * 8
    assert [u.min_bits for u in units] == [8, 4, 4, 4, 8]
    wrap_units(net, units)  # discovery on a wrapped model finds the same units
    assert [u.convs for u in discover_units(net)] == [u.convs for u in units]


def test_quant_conv_modes_and_plan():
    net = make_tiny_net()
    fold_batchnorm(net, torch.randn(1, 3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    ref = net(x)
    units = discover_units(net)
    wrap_units(net, units)
    assert torch.allclose(net(x), ref)  # float mode is the FP32 model
    set_mode(net, "calibrate")
    net(x)
    set_mode(net, "quant")
    apply_plan(net, units, {u.name: "w8a8" for u in units})
    err8 = (net(x) - ref).abs().mean()
    apply_plan(net, units, {**{u.name: "w4a8" for u in units}, "stem": "w8a8", "head": "w8a8"})
    err4 = (net(x) - ref).abs().mean()
    apply_plan(net, units, {})
    assert torch.allclose(net(x), ref)  # every unit "keep"
    assert 0 < err8 < err4 < ref.abs().mean()


def test_quant_conv_trains_through_ste():
    conv = QuantConv2d(torch.nn.Conv2d(2, 3, 3))
    conv.mode = "calibrate"
    x = torch.randn(1, 2, 6, 6)
    conv(x)
    conv.mode, conv.precision = "quant", "w4a8"
    conv(x).sum().backward()
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0


def test_only_conv_outputs_read_by_nothing_but_a_relu_go_unsigned():
    from edge_inspector.quantization.activation_grids import mark_unsigned_activations, tie_activation_ranges
    from edge_inspector.quantization.units import quant_modules

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Conv2d(3, 3, 1) for _ in range(4))
            self.relu6 = nn.ReLU6()

        def forward(self, x):
            y = self.b(self.relu6(self.a(x)))  # a: read only by ReLU6 -> unsigned, clip 6
            z = self.c(y)
            z = torch.relu(z) + z  # c: also read by the add -> stays signed
            return self.d(torch.clamp(z, -1, 1))  # clamp from -1 is not a ReLU

    net = Net().eval()
    units = discover_units(net)
    wrap_units(net, units)
    x = torch.randn(2, 3, 4, 4)
    assert mark_unsigned_activations(net, x[:1]) == ["a"]
    modules = quant_modules(net)
    assert modules["a"].out_observer.unsigned_clip == 6.0 and not modules["c"].out_observer.unsigned
    set_mode(net, "calibrate")
    net(x)
    assert modules["a"].out_observer.amax.item() <= 6.0  # measured after the clip
    tie_activation_ranges(net, x[:1])
    assert modules["b"].in_observer.unsigned and not modules["d"].in_observer.unsigned
