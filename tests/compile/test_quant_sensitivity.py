"""HQS signals: synthetic defects with exact masks, the Hutchinson estimator, per-unit signals on a tiny HaloAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.data.synthetic import KINDS, probe_from_goods, synthetic_defects
from edge_inspector.quantization.prober import Prober
from edge_inspector.quantization.sensitivity import (
    UnitSignals,
    combine,
    hutchinson_traces,
    measure_signals,
)
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.quantization.attention_quant import attach_to_blocks
from edge_inspector.quantization.units import discover_units, set_mode, unused_convs, wrap_units
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import AnomalyScorer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _goods(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(80, 160, (1, size, size, 3)).astype(np.float32)
    return np.clip(base + rng.normal(0, 8, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_synthetic_defects_change_only_masked_pixels():
    goods = _goods(6)
    images, masks = synthetic_defects(goods, np.random.default_rng(1))
    assert images.shape == goods.shape and masks.shape == goods.shape[:3] and masks.dtype == bool
    for good, image, mask in zip(goods, images, masks):
        assert 0 < mask.mean() < 0.5
        assert np.array_equal(image[~mask], good[~mask])
        assert np.abs(image[mask].astype(int) - good[mask]).mean() > 1
    probe = probe_from_goods(goods[:3], 2, groups=np.array([7, 7, 9]))
    assert len(probe.normal) == 3 and len(probe.defects) == 6 and len(KINDS) == 3
    assert probe.labels().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1] and probe.all_masks()[:3].sum() == 0
    # every defect is made from one of the goods and belongs to its part
    assert probe.groups.tolist() == [7, 7, 9, 7, 7, 7, 7, 9, 9]
    for good, defect, mask in zip(np.repeat(goods[:3], 2, axis=0), probe.defects, probe.masks):
        assert np.array_equal(defect[~mask], good[~mask])


def test_hutchinson_is_exact_on_diagonal_hessians_and_ignores_cross_terms():
    a = torch.tensor([1.0, 2.0, 3.0, 6.0])
    p = torch.nn.Parameter(torch.randn(4))
    q = torch.nn.Parameter(torch.randn(3))
    # H_pp = diag(a), H_qq = 4 I, and a coupling p[0] * q[0] that has no diagonal entry
    traces = hutchinson_traces(lambda: 0.5 * (a * p**2).sum() + 2 * (q**2).sum() + 5 * p[0] * q[0],
                               {"p": [p], "q": [q]}, samples=50)
    assert traces["p"] == pytest.approx(3.0, abs=0.6)  # mean(a) = 3; the cross term adds zero-mean noise only
    assert traces["q"] == pytest.approx(4.0, abs=0.6)
    exact = hutchinson_traces(lambda: 0.5 * (a * p**2).sum(), {"p": [p]}, samples=2)
    assert exact["p"] == pytest.approx(3.0)


def test_combine_scales_each_signal_by_its_largest_4bit_value():
    a = UnitSignals("a", "conv", 10, drift={"w4a8": 2.0, "w8a8": 0.1}, image_auroc_change={"w4a8": 5.0})
    b = UnitSignals("b", "conv", 10, drift={"w4a8": 1.0, "w8a8": 0.0}, image_auroc_change={"w4a8": -4.0})
    combine([a, b], {"drift": 1.0, "auroc_drop": 1.0, "separation_loss": 0, "hessian": 0, "attention": 0})
    assert a.score == {"w4a8": 1.0, "w8a8": 0.05}  # an AUROC gain is not a credit
    assert b.score == {"w4a8": 1.5, "w8a8": 0.0}


def test_signals_on_a_tiny_haloae():
    # a short backbone (stage2) and two blocks keep this test fast: 25 units instead of 65
    spec = load_preset("haloae-lite", ["model.width=64", "model.height=64", "model.layers=[stage2]",
                                       "model.widths=[32,32,16]", "model.heads=[2,2]", "model.kernels=[3,3]"]).model
    model = build_model(spec, pretrained=False).eval()
    scorer = AnomalyScorer(model, 64, 64).eval()
    goods = _goods(12)
    fit_normal_statistics(scorer, goods[:4])
    with torch.no_grad():
        fold_batchnorm(scorer, torch.from_numpy(goods[:1]))
    unused = unused_convs(scorer, torch.from_numpy(goods[:1]))  # the location head and its backbone layers
    units = discover_units(scorer, skip=("model.image_head", "model.classifier", *unused))
    assert not any(u.name.startswith("model.location") for u in units) and len(units) == 25
    wrap_units(scorer, units)
    attach_to_blocks(scorer, [u.name for u in units if u.kind == "attention"], torch.from_numpy(goods[:1]))
    set_mode(scorer, "calibrate")
    with torch.no_grad():
        scorer(torch.from_numpy(goods[:4]))
    probe = probe_from_goods(goods[4:8], 1)
    x = model.normalize(torch.from_numpy(goods[:2]))

    def loss():
        f = model.features(x)
        return (model.reconstruct(f) - f).square().mean()

    prober = Prober(scorer, units, probe)
    attention = next(u for u in units if u.kind == "attention")
    fast = prober.run({attention.name: "w4a8"})  # reuses cached FP32 backbone features
    with torch.no_grad():
        full_map, full_score = scorer(torch.from_numpy(probe.images()))  # same plan, whole forward
    np.testing.assert_allclose(fast.maps, full_map[:, 0, ::4, ::4].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.scores, full_score.numpy(), rtol=1e-5)
    signals = measure_signals(scorer, units, probe, loss, hessian_samples=2, progress=False, prober=prober)
    by_name = {s.name: s for s in signals}
    assert [s.name for s in signals] == [u.name for u in units]
    for unit in units:
        s = by_name[unit.name]
        assert set(s.score) == {"w4a8", "w8a8"} and all(np.isfinite(v) for v in s.score.values())
        assert s.drift["w8a8"] >= 0
        if unit.min_bits == 4:
            assert s.drift["w4a8"] > 0
        if unit.name.startswith("model.backbone"):
            assert s.hessian_trace is None  # frozen backbone: outside the reconstruction loss
        else:
            assert s.hessian_trace is not None and set(s.hessian) == {"w4a8", "w8a8"}
        if unit.kind == "attention":  # from the probabilities the block computed, with integer QK^T and AV
            assert s.attention_entropy is not None and s.attention_entropy > 0
            assert "w4a8" in s.attention_entropy_change and set(s.attention_kl) == {"w4a8", "w8a8"}
    free = [by_name[u.name] for u in units if u.min_bits == 4]
    # 8 bits hurts less than 4 bits for nearly every unit, and some unit carries the largest 4-bit score
    assert np.mean([s.drift["w8a8"] < s.drift["w4a8"] for s in free]) > 0.8
    assert max(s.score["w4a8"] for s in free) > 0
