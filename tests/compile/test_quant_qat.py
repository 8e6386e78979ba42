"""Stage 2 (QAT): trains the AE through the fake quantizers, leaves the frozen backbone alone, lowers its loss."""

from __future__ import annotations

import numpy as np
import torch

from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset
from edge_inspector.quantization.qat import QatOptions, finetune, invariant_cells
from edge_inspector.model.batchnorm import fold_batchnorm
from edge_inspector.quantization.units import apply_plan, discover_units, quant_modules, set_mode, wrap_units
from edge_inspector.model.scorer import AnomalyScorer

OVERRIDES = ["model.width=64", "model.height=64", "model.grid_stride=8", "model.layers=[stage2]", "model.widths=[32,32,16]",
             "model.heads=[2,2]", "model.kernels=[3,3]"]


def test_qat_updates_the_autoencoder_only_and_reduces_its_loss():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = load_preset("haloae-lite", OVERRIDES)
    model = build_model(preset.model, pretrained=False).eval()
    scorer = AnomalyScorer(model, 64, 64).eval()
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(120, 20, (6, 64, 64, 3)), 0, 255).astype(np.uint8)
    with torch.no_grad():
        fold_batchnorm(scorer, torch.from_numpy(images[:1]))
    units = discover_units(scorer, skip=("model.image_head", "model.classifier"))
    wrap_units(scorer, units)
    set_mode(scorer, "calibrate")
    with torch.no_grad():
        scorer(torch.from_numpy(images))
    apply_plan(scorer, units, {u.name: "w4a8" if u.min_bits == 4 else "w8a8" for u in units})
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    stem = model.stem[0].conv.weight.detach().clone()
    report = finetune(scorer, images, preset, QatOptions(steps=8, lr=1e-3, batch_size=2), progress=False)
    assert report.steps == 8 and set(report.losses) == {"loss", "haloae", "distill", "map"}
    assert all(np.isfinite(report.history))
    assert np.mean(report.history[-3:]) < np.mean(report.history[:3])
    assert not torch.equal(model.stem[0].conv.weight, stem)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), key
    assert all(m.mode == "quant" for m in quant_modules(scorer).values())
    inv = invariant_cells(model, images, 0.25)
    assert inv.shape == (1, 1, 8, 8) and 0.2 <= float(inv.mean()) <= 0.35
