"""Cache frozen Lite0 features of magnetic_tile once, so auto-encoder variants train in minutes (issue 13 research).

The backbone is frozen, so every training step of today's trainer recomputes the same features. This runs it once
per image at one input size and stores, in float16, the stage2..stage6 maps (strides 4, 8, 16, 16, 32) of:

- ``train``: every train/good image (fit and holdout are told apart by the split file);
- ``test``: every test image, with its mask at the input size;
- ``probe``: one synthetic defect per holdout image and kind (CutPaste, scar, Perlin; ``data/synthetic.py``, seed 0,
  as the head choice makes them), with exact masks;
- ``corrupt``: ``--corruptions`` synthetic defects per fit image (other seed) with masks: inputs for denoising
  training (reconstruct the clean features from them).

    nice -n 10 .venv/bin/python benchmarks/research_haloae/cache.py --width 256 --height 256

Output: ``benchmarks/work/research_haloae/<W>x<H>/<set>.npz`` (git-ignored; ~0.4 MB per image).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edge_inspector.data.folders import LabelledImage, load_images, load_mask
from edge_inspector.data.synthetic import synthetic_defects
from edge_inspector.model.haloae import build_model
from edge_inspector.model.presets import load_preset

from protocol import DEFAULT_DATA, load_split

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "work" / "research_haloae"
LAYERS = ("stage2", "stage3", "stage4", "stage5", "stage6")


@torch.no_grad()
def backbone_features(model, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    for start in range(0, len(images), batch):
        x = model.normalize(torch.from_numpy(images[start : start + batch]))
        for name, fmap in zip(LAYERS, model.backbone(x, list(LAYERS))):
            parts[name].append(fmap.half().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def save(path: Path, images: np.ndarray, model, **extra) -> None:
    start = time.perf_counter()
    feats = backbone_features(model, images)
    np.savez(path, images=images, **{f"f_{k}": v for k, v in feats.items()}, **extra)
    print(f"{path.name}: {len(images)} images in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--corruptions", type=int, default=3)
    parser.add_argument("--sets", nargs="*", default=["train", "test", "probe", "corrupt"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.data)
    split = load_split()
    w, h = args.width, args.height
    out = WORK / f"{w}x{h}"
    out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("haloae-lite", [f"model.width={w}", f"model.height={h}", "model.layers=[stage2,stage3,stage4,stage5,stage6]"])
    model = build_model(preset.model).eval()

    train_paths = sorted(split["fit"] + split["holdout"])
    train = load_images([root / p for p in train_paths], w, h)
    if "train" in args.sets:
        save(out / "train.npz", train, model, paths=np.array(train_paths))
    if "test" in args.sets:
        test_paths = sorted(split["validation"] + split["test_rest"])
        samples = [LabelledImage(root / p, p.split("/")[1],
                                 None if "/good/" in p else root / "ground_truth" / p.split("/")[1] /
                                 f"{Path(p).stem}_mask.png") for p in test_paths]
        masks = np.stack([load_mask(s, w, h) for s in samples])
        save(out / "test.npz", load_images([root / p for p in test_paths], w, h), model,
             paths=np.array(test_paths), masks=masks)
    index = {p: i for i, p in enumerate(train_paths)}
    if "probe" in args.sets:
        holdout = train[[index[p] for p in split["holdout"]]]
        defects, masks = synthetic_defects(np.repeat(holdout, 3, axis=0), np.random.default_rng(0))
        save(out / "probe.npz", defects, model, masks=masks)
    if "corrupt" in args.sets:
        fit = train[[index[p] for p in split["fit"]]]
        bases = np.repeat(fit, args.corruptions, axis=0)
        # cycle the kinds differently per copy so each image gets each kind once
        defects, masks = synthetic_defects(bases, np.random.default_rng(1))
        source = np.repeat(np.array([index[p] for p in split["fit"]]), args.corruptions)
        save(out / "corrupt.npz", defects, model, masks=masks, source=source)


if __name__ == "__main__":
    main()
