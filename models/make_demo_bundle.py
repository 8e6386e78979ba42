"""Build the placeholder demo bundle in models/demo from the tests' tiny local-contrast graph (run by hand, once).

The real demo model is a HaloAE trained on the demo line (``edge-inspector demo --write-dataset DIR`` then
``edge-inspector train``); until it replaces this folder, this bundle lets ``edge-inspector demo`` run end to end.
Thresholds are calibrated on good demo parts only (a seed range the demo line does not use by default):

    PYTHONPATH=. .venv/bin/python models/make_demo_bundle.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_inspector.bundle.store import load_bundle, write_bundle
from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.engines.ort import OrtEngine
from tests.fixtures.bundles import make_tiny_bundle

SIZE, LOCAL, SMOOTH = 256, 31, 9
CALIBRATION_SEED, CALIBRATION_PARTS = 1000, 100
TARGET_FALSE_REJECT_RATE = 0.01


def main() -> None:
    out = Path(__file__).resolve().parent / "demo"
    maker = PartMaker("gravel", SIZE, seed=CALIBRATION_SEED)
    goods = np.stack([cv2.cvtColor(maker.make().image, cv2.COLOR_BGR2RGB) for _ in range(CALIBRATION_PARTS)])
    draft = make_tiny_bundle(out, SIZE, SIZE, model_id="demo-gravel-local-contrast", local=LOCAL, smooth=SMOOTH,
                             calibration_images=goods[:4])
    engine = OrtEngine(load_bundle(draft.path))
    outputs = [engine.infer(image) for image in goods]
    scores = np.array([o.score for o in outputs])
    pixels = np.concatenate([o.anomaly_map.ravel() for o in outputs])
    manifest = draft.manifest.model_copy(deep=True)
    # The quantile alone sits right at the good parts' edge; a 10 % margin keeps false rejects rare on unseen parts.
    manifest.thresholds.image = float(np.quantile(scores, 1 - TARGET_FALSE_REJECT_RATE) * 1.1)
    manifest.thresholds.image_method = "quantile"
    manifest.thresholds.target_false_reject_rate = TARGET_FALSE_REJECT_RATE
    manifest.thresholds.pixel = float(np.quantile(pixels, 0.999) * 1.1)
    manifest.thresholds.pixel_method = "quantile"
    engine.close()
    write_bundle(out, out / "model.onnx", manifest, goods[:4])
    print(f"wrote {out}: image threshold {manifest.thresholds.image:.4f}, pixel {manifest.thresholds.pixel:.4f}")


if __name__ == "__main__":
    main()
