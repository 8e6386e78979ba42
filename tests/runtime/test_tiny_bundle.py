"""The shared tiny-bundle fixture is a real, valid bundle whose graph separates defects from flat texture."""

import cv2
import numpy as np
import onnxruntime as ort

from edge_inspector.bundle.store import load_bundle
from tests.fixtures.bundles import DEFAULT_IMAGE_THRESHOLD, make_tiny_bundle


def test_tiny_bundle_loads_and_scores_defects_high(tmp_path):
    bundle = load_bundle(make_tiny_bundle(tmp_path / "b", width=64, height=48).path)
    assert bundle.manifest.input.width == 64 and bundle.manifest.input.height == 48
    assert bundle.calibration_images().shape == (4, 48, 64, 3)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    good = np.clip(128 + rng.normal(0, 3, (1, 48, 64, 3)), 0, 255).astype(np.uint8)
    bad = good.copy()
    cv2.line(bad[0], (5, 5), (50, 40), (48, 48, 48), 2)
    good_map, good_score = session.run(None, {"image": good})
    _, bad_score = session.run(None, {"image": bad})
    assert good_map.shape == (1, 1, 48, 64) and good_score.shape == (1,)
    assert good_score[0] < DEFAULT_IMAGE_THRESHOLD < bad_score[0]
