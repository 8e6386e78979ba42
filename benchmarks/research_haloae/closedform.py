"""Closed-form per-cell Gaussians on the cached features (no training): how far location statistics alone go at
finer grids and on other layers, scored on the validation slice like the auto-encoder variants.

    nice -n 10 .venv/bin/python benchmarks/research_haloae/closedform.py [NAME ...] [--blur SIGMA ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import shlex
import sys

import torch
import torch.nn.functional as F

from edge_inspector.model.blur import gaussian_kernel
from edge_inspector.model.location import LocationGaussian

from explore import LOG, summary_line
from features import STAGE_CHANNELS, Cache
from scoremaps import Evaluator

GRID = (32, 32)
VARIANTS = {
    "loc_s456_8x8_pca128": (["stage4", "stage5", "stage6"], 8, 128),
    "loc_s456_16x16_pca64": (["stage4", "stage5", "stage6"], 16, 64),
    "loc_s235_16x16_pca64": (["stage2", "stage3", "stage5"], 16, 64),
    "loc_s23456_8x8_pca128": (["stage2", "stage3", "stage4", "stage5", "stage6"], 8, 128),
    "loc_s23_32x32_pca32": (["stage2", "stage3"], 32, 32),
    "loc_s2_64x64_pca24": (["stage2"], 64, 24),
    "loc_s456_16x16_pca32": (["stage4", "stage5", "stage6"], 16, 32),
    "loc_s456_16x16_pca96": (["stage4", "stage5", "stage6"], 16, 96),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(VARIANTS))
    parser.add_argument("--blur", type=float, nargs="*", default=[1.0],
                        help="sigmas (grid cells of the 32x32 map) of the score blur to try")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache = Cache()
    ev = Evaluator(cache, [256, 256], GRID, reduce=2)
    for name, sigma in itertools.product(args.names, args.blur):
        ev.kernel = gaussian_kernel(sigma)
        layers, side, dims = VARIANTS[name]
        grid = (side, side)
        head = LocationGaussian(sum(STAGE_CHANNELS[n] for n in layers), grid, dims, 0.01, 0.5)
        head.fit(cache.train.grid(layers, grid, cache.train_index("fit")))
        maps = {}
        with torch.no_grad():
            for part in ("holdout", "validation"):
                g = (cache.train.grid(layers, grid, cache.train_index("holdout")) if part == "holdout"
                     else ev.grid_of(part, layers, grid))
                maps[part] = F.interpolate(head(g), size=GRID, mode="bilinear", align_corners=False)
        suffix = "" if sigma == 1.0 else f"_blur{sigma:g}"
        row = {"config": {"name": f"closedform_{name}{suffix}", "layers": layers, "grid": side, "dims": dims,
                          "blur": sigma},
               "variant": "loc", "part": "validation",
               "metrics": ev.evaluate("validation", maps["validation"], maps["holdout"])}
        with open(LOG, "a") as fh:
            fh.write(json.dumps({"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                 "command": shlex.join(sys.argv), **row}) + "\n")
        print(summary_line(row), flush=True)


if __name__ == "__main__":
    main()
