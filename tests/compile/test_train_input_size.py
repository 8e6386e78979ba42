"""The automatic input size end to end: elongated synthetic parts get a tall input that ``train`` prints and records,
and the bundle trains, exports and runs through ONNX Runtime at that size (toy sizes: a budget of 64x128 pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_inspector.bundle.store import load_bundle
from edge_inspector.cli import main
from edge_inspector.data.folders import read_image, scan_category
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.preprocess import to_model_input
from edge_inspector.training.trainer import load_checkpoint
from tests.fixtures.synthetic_dataset import write_synthetic_category

torch.set_num_threads(1)
PARTS = (80, 200)
"""width x height of the synthetic parts: 1:2.5."""
TOY = ["model.input_pixels=8192", "train.epochs=1", "train.batch_size=2", "train.holdout_fraction=0.25",
       "train.threads=1", "score.head=reconstruction"]


@pytest.fixture(scope="module")
def elongated(tmp_path_factory):
    return write_synthetic_category(tmp_path_factory.mktemp("data") / "rods", n_train=8, n_test_good=2,
                                    n_test_defect=2, size=PARTS)


@pytest.mark.slow
def test_elongated_parts_get_a_tall_input_that_trains_exports_and_runs(elongated, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(elongated), "--out", str(out), "--no-progress", *TOY]) == 0
    printed = capsys.readouterr().out
    # Printed before training, with the statistics seen: the median aspect 2.5 at 8192 px gives 57x143, and of the
    # sides haloae-lite accepts (multiples of 64) 64x128 is the closest in aspect within sqrt(2) of the budget.
    assert printed.index("input       64x128 (auto): median aspect 2.50") < printed.index("trained     1 of 1")
    assert "8 training images, 80-80 px wide, 200-200 px high" in printed
    assert "0.12x the pixels of 256x256" in printed and "latency     ONNX Runtime" in printed

    bundle = load_bundle(out)
    m = bundle.manifest
    assert (m.input.width, m.input.height) == (64, 128)
    record = m.training.input_size
    assert record.source == "auto" and record.pixel_budget == 8192 and record.warnings == []
    assert record.image_sizes["median_aspect"] == 2.5 and record.image_sizes["count"] == 8
    assert type(record.image_sizes["count"]) is int  # a count stays a count in the manifest
    # The checkpoint keeps the size too: calibrate and checkpoint evaluation read it from there.
    _, preset = load_checkpoint(out.with_name("bundle.work") / "checkpoints" / "last.pt")
    assert (preset.model.width, preset.model.height) == (64, 128)

    # A test part as the line prepares it, through ONNX Runtime at the bundle's size.
    part = scan_category(elongated).test[0].path
    image, _ = to_model_input(read_image(part), m.input.width, m.input.height, m.input.resize)
    engine = OrtEngine(bundle)
    try:
        output = engine.infer(image)
    finally:
        engine.close()
    assert output.anomaly_map.shape == (128, 64) and np.isfinite(output.score)

    # eval takes the size from the bundle.
    assert main(["eval", "--model", str(out), "--data", str(elongated), "--out", str(tmp_path / "eval"),
                 "--no-progress", "--overlays", "0"]) == 0
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["metrics"]["overall"]["n_images"] == 6
