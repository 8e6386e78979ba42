"""Probe statistics: bootstrap intervals by part, binned metrics against the exact ones, AdaRound against nearest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.engines.cpu_features import cpu_flags, has_vnni
from edge_inspector.quantization.bootstrap import group_weights, intervals, metrics, per_image, weighted_auroc
from edge_inspector.training.metrics import aupro, image_auroc, pixel_auroc


def _labelled_maps(seed: int, n: int = 60, size: int = 32):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) >= n // 3).astype(int)
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
    maps = rng.normal(0, 1, masks.shape) + 1.2 * masks + rng.normal(0, 0.3, (n, 1, 1))
    return maps.astype(np.float32), masks, maps.reshape(n, -1).max(1), labels


def test_binned_metrics_match_the_exact_ones():
    maps, masks, scores, labels = _labelled_maps(0)
    found = metrics(per_image(maps, masks, scores, labels))
    assert found["image_auroc"] == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert found["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-3)
    assert found["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-3)


def test_weights_count_images_as_repeated():
    maps, masks, scores, labels = _labelled_maps(1, n=12)
    weights = np.array([2, 0, 1, 1, 3, 1, 0, 1, 2, 1, 1, 1], float)
    index = np.repeat(np.arange(12), weights.astype(int))
    found = metrics(per_image(maps, masks, scores, labels), weights)
    assert found["image_auroc"] == pytest.approx(image_auroc(scores[index], labels[index]), abs=1e-12)
    assert found["pixel_auroc"] == pytest.approx(pixel_auroc(maps[index], masks[index]), abs=2e-3)
    assert weighted_auroc(np.array([1.0, 1.0]), np.array([0, 1]), np.ones(2)) == 0.5  # a tie counts half


def test_redraws_take_whole_groups():
    groups = np.array([5, 5, 5, 9, 9, 2])
    weights = group_weights(groups, 6, draws=200, seed=0)
    assert weights.shape == (200, 6)
    assert np.all(weights[:, 0] == weights[:, 1]) and np.all(weights[:, 3] == weights[:, 4])
    assert np.all(weights[:, [0, 3, 5]].sum(1) == 3)  # three groups drawn each time


def test_paired_drop_intervals_cover_the_drop_and_are_narrower_than_either_variant():
    maps, masks, scores, labels = _labelled_maps(2, n=90)
    rng = np.random.default_rng(3)
    worse = maps + rng.normal(0, 0.4, maps.shape).astype(np.float32)
    stats = {"fp32": per_image(maps, masks, scores, labels),
             "quant": per_image(worse, masks, worse.reshape(len(worse), -1).max(1), labels)}
    found = intervals(stats, "fp32", groups=np.arange(90) // 3, draws=300)
    drop = found["quant"]["pixel_auroc_drop"]
    assert drop.low <= drop.value <= drop.high and drop.value > 0
    own = found["quant"]["pixel_auroc"]
    assert drop.high - drop.low < own.high - own.low  # pairing cancels what both share
    by_image = intervals(stats, "fp32", draws=300)["fp32"]["image_auroc"]  # no groups: each image its own
    assert by_image.low <= by_image.value <= by_image.high


def test_vnni_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n")
    assert cpu_flags(info) >= {"avx2", "avx512_vnni"} and has_vnni(cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not has_vnni(cpu_flags(info)) and cpu_flags(tmp_path / "missing") == set()


def test_adaround_lowers_the_output_error_of_4bit_convs_and_bakes_grid_weights():
    from edge_inspector.model.batchnorm import fold_batchnorm
    from edge_inspector.quantization.adaround import AdaRoundOptions, adaround
    from edge_inspector.quantization.fakequant import quantize_weight
    from edge_inspector.quantization.units import apply_plan, discover_units, quant_modules, set_mode, wrap_units
    from tests.compile.quant_nets import make_tiny_net

    torch.set_num_threads(1)
    net = make_tiny_net(seed=3, width=16)
    calib = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fold_batchnorm(net, calib[:1])
    units = discover_units(net)
    wrap_units(net, units)
    set_mode(net, "calibrate")
    with torch.no_grad():
        net(calib)
    plan = {u.name: "w4a8" if u.min_bits == 4 else "w8a8" for u in units}
    apply_plan(net, units, plan)
    report = adaround(net, units, plan, calib.numpy(), AdaRoundOptions(steps=300, images=8))
    assert set(report.convs) == {c for u in units if plan[u.name] == "w4a8" for c in u.convs}
    for name, figures in report.convs.items():
        assert figures["error_adaround"] <= figures["error_nearest"]
        module = quant_modules(net)[name]
        codes, scale = quantize_weight(module.conv.weight, 4)
        if figures["kept"]:  # baked: the float weights are grid values that nearest rounding keeps
            assert torch.allclose(module.conv.weight, codes * scale.view(-1, 1, 1, 1), atol=1e-6)
    assert any(f["kept"] and f["error_adaround"] < 0.9 * f["error_nearest"] for f in report.convs.values())
