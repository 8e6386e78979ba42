"""Why a location head (issue 2): on the same Lite0 features, scores that know where a cell is against scores that
do not, on the full magnetic_tile test split.

    .venv/bin/python benchmarks/bench_location.py

Every variant reads the features ``haloae-lite``'s location head reads (stage4+5+6 pooled to 8x8 at 256x256, fitted
on ``train/good`` minus the same seeded holdout the trainer keeps back) and goes through the scorer's own map
pipeline (bilinear to the 32x32 auto-encoder grid, Gaussian blur 1 cell, bilinear to 256x256, top-1 % score):

- ``location head``: the shipped head (a Gaussian per cell, PCA to 128 dims);
- ``one Gaussian for all cells``: the same head with every cell's statistics pooled (location-blind);
- ``cells in 2x2 tiles``: one Gaussian per 2x2 block of cells (how fast location specificity pays off);
- ``patch nearest neighbour``: distance to the nearest training cell anywhere (PatchCore-like, location-blind,
  60k random memory cells);
- ``image nearest neighbour``: distance of the whole feature map to the nearest training image (image AUROC only):
  high here means test images have near-duplicates among the training images.

Writes ``benchmarks/results/location_<dataset>_<time>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_inspector.data.folders import load_images, load_test_set, scan_category  # noqa: E402
from edge_inspector.data.folders import holdout_split  # noqa: E402
from edge_inspector.model.blur import blur, gaussian_kernel  # noqa: E402
from edge_inspector.model.haloae import build_model  # noqa: E402
from edge_inspector.model.location import LocationGaussian  # noqa: E402
from edge_inspector.model.presets import load_preset  # noqa: E402
from edge_inspector.engines.records import new_record, script_command, write_record  # noqa: E402
from edge_inspector.training.metrics import image_auroc, pixel_auroc  # noqa: E402
from edge_inspector.model.scorer import aggregate  # noqa: E402


@torch.no_grad()
def location_grids(model, images: np.ndarray, batch: int = 16) -> torch.Tensor:
    return torch.cat([model.location_features(model.backbone_maps(model.normalize(torch.from_numpy(images[s:s + batch]))))
                      for s in range(0, len(images), batch)])


def fold_cells(grid: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, C, h, w) -> (N * tile^2, C, h / tile, w / tile): each tile's cells become samples of one cell."""
    n, c, h, w = grid.shape
    t = grid.reshape(n, c, h // tile, tile, w // tile, tile).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(n * tile * tile, c, h // tile, w // tile)


def unfold_cells(maps: torch.Tensor, n: int, tile: int) -> torch.Tensor:
    _, _, hh, ww = maps.shape
    return maps.reshape(n, tile, tile, 1, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(n, 1, hh * tile, ww * tile)


def gaussian_map(fit: torch.Tensor, test: torch.Tensor, tile: int, dims: int, shrinkage: float) -> torch.Tensor:
    """Distance maps (N, 1, h, w) with one Gaussian per ``tile`` x ``tile`` block of cells (tile = h: one for all)."""
    folded = fold_cells(fit, tile)
    head = LocationGaussian(fit.shape[1], tuple(folded.shape[-2:]), dims, shrinkage, blur_sigma=0)
    head.fit(folded)
    with torch.no_grad():
        return unfold_cells(head(fold_cells(test, tile)), len(test), tile)


def patch_nn_map(fit: torch.Tensor, test: torch.Tensor, memory: int, seed: int = 0) -> torch.Tensor:
    mean, std = fit.mean((0, 2, 3), keepdim=True), fit.std((0, 2, 3), keepdim=True)
    bank = ((fit - mean) / std).permute(0, 2, 3, 1).reshape(-1, fit.shape[1])
    bank = bank[torch.from_numpy(np.random.default_rng(seed).permutation(len(bank))[:memory])]
    queries = ((test - mean) / std).permute(0, 2, 3, 1).reshape(-1, fit.shape[1])
    nearest = torch.cat([torch.cdist(q, bank).min(1).values for q in queries.split(4096)])
    n, _, h, w = test.shape
    return nearest.reshape(n, 1, h, w)


def metrics(maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], masks: np.ndarray,
            labels: np.ndarray) -> dict[str, float]:
    """The scorer's pipeline on raw maps, then image (top-1 %) and pixel AUROC."""
    maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
    maps = F.interpolate(blur(maps, gaussian_kernel(1.0)), size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = maps.numpy()
    return {"image_auroc": image_auroc(aggregate(maps, "topk", 0.01), labels),
            "pixel_auroc": pixel_auroc(maps[:, ::2, ::2], masks[:, ::2, ::2])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/datasets/magnetic_tile")
    parser.add_argument("--config", default="haloae-lite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_preset(args.config)
    spec, loc = preset.model, preset.model.location
    category = scan_category(args.data, require_test=True)
    fit_paths, _ = holdout_split(category, preset.train)
    model = build_model(spec).eval()
    fit = location_grids(model, load_images(fit_paths, spec.width, spec.height, spec.resize))
    test_images, masks = load_test_set(category, spec.width, spec.height, spec.resize)
    test = location_grids(model, test_images)
    labels = np.array([s.is_anomalous for s in category.test])
    size, grid = (spec.height, spec.width), spec.grid
    h = fit.shape[-2]
    rows = {}
    for name, maps in (
        ("location head", lambda: gaussian_map(fit, test, 1, loc.dims, loc.shrinkage)),
        ("cells in 2x2 tiles", lambda: gaussian_map(fit, test, 2, loc.dims, loc.shrinkage)),
        ("one Gaussian for all cells", lambda: gaussian_map(fit, test, h, loc.dims, loc.shrinkage)),
        ("patch nearest neighbour", lambda: patch_nn_map(fit, test, memory=60_000)),
    ):
        rows[name] = metrics(maps(), grid, size, masks, labels)
        print(f"{name:28s} image {rows[name]['image_auroc']:.3f}  pixel {rows[name]['pixel_auroc']:.3f}", flush=True)
    flat_fit, flat_test = fit.flatten(1), test.flatten(1)
    mean, std = flat_fit.mean(0), flat_fit.std(0).clamp_min(1e-6)
    nearest = torch.cdist((flat_test - mean) / std, (flat_fit - mean) / std).min(1).values.numpy()
    rows["image nearest neighbour"] = {"image_auroc": image_auroc(nearest, labels)}
    print(f"{'image nearest neighbour':28s} image {rows['image nearest neighbour']['image_auroc']:.3f}")
    doc = new_record(script_command(), "torch", **{
        "benchmark": "location",
        "dataset": category.name,
        "features": {"layers": loc.layers, "grid": list(fit.shape[-2:]), "channels": int(fit.shape[1]),
                     "dims": loc.dims, "n_fit": len(fit), "n_test": len(test)},
        "results": rows,
    })
    write_record(args.out, f"location_{category.name}", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
