"""Issue 13 research protocol on magnetic_tile: tiles, the grouped holdout, and the validation slice of test.

Every crop belongs to a tile: sort all crops (train and test) by the frame number in ``exp<k>_num_<N>.jpg``; a gap
of more than 150 starts a new tile (the dataset README). From that:

- **holdout**: a seeded ~15 % of the train/good *tiles* is held back from fitting (normal statistics, per-cell
  standardisation, synthetic-defect probe). No tile has crops on both sides.
- **validation slice**: a seeded third of the *test tiles*, stratified by the tile's rarest defect type (good-only
  tiles form their own stratum), so every defect type is represented. Every design choice is made on it (and on
  synthetic defects over the holdout).
- **test-rest**: the other test tiles, never looked at while designing. Final figures are reported on it and on
  the full test split (for comparison with the peers' table).

    .venv/bin/python benchmarks/research_haloae/protocol.py     # writes split_magnetic_tile.json

The JSON lists every file of each part (paths relative to the dataset root), so the split is reproducible without
this code.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = next((p / "shared" / "datasets" / "magnetic_tile" for p in HERE.parents
                     if (p / "shared" / "datasets" / "magnetic_tile").is_dir()), Path("magnetic_tile"))
"""The team's shared copy (``/work/shared/datasets``), found above this checkout; never copied into the repo."""
SPLIT_FILE = HERE / "split_magnetic_tile.json"
FRAME = re.compile(r"exp\d+_num_(\d+)\.")
TILE_GAP = 150
RARITY = ("fray", "crack", "break", "uneven", "blowhole")
"""Stratum of a test tile: its rarest defect type in this order (fewest test crops first), else 'good'."""


def tiles_of(paths: list[str]) -> dict[str, int]:
    """Relative path -> tile id (0, 1, ...) by frame-number gaps over ``TILE_GAP``."""
    numbered = sorted((int(FRAME.search(Path(p).name).group(1)), p) for p in paths)
    tile, previous, out = -1, None, {}
    for number, path in numbered:
        if previous is None or number - previous > TILE_GAP:
            tile += 1
        out[path], previous = tile, number
    return out


def _stratum(kinds: set[str]) -> str:
    return next((kind for kind in RARITY if kind in kinds), "good")


def make_split(root: Path, holdout_fraction: float, val_fraction: float, seed: int) -> dict:
    """The protocol's file lists (relative to ``root``) and how they were drawn."""
    train = sorted(p.relative_to(root).as_posix() for p in (root / "train" / "good").glob("*.jpg"))
    test = sorted(p.relative_to(root).as_posix() for p in (root / "test").glob("*/*.jpg"))
    tile = tiles_of(train + test)
    rng = np.random.default_rng(seed)

    train_tiles = sorted({tile[p] for p in train})
    n_hold = max(1, round(holdout_fraction * len(train_tiles)))
    held_tiles = set(rng.permutation(train_tiles)[:n_hold].tolist())
    holdout = [p for p in train if tile[p] in held_tiles]
    fit = [p for p in train if tile[p] not in held_tiles]

    kinds: dict[int, set[str]] = {}
    for p in test:
        kinds.setdefault(tile[p], set()).add(p.split("/")[1])
    strata: dict[str, list[int]] = {}
    for t, k in sorted(kinds.items()):
        strata.setdefault(_stratum(k), []).append(t)
    val_tiles: set[int] = set()
    for name in sorted(strata):
        members = strata[name]
        take = max(1, round(val_fraction * len(members)))
        val_tiles |= set(rng.permutation(members)[:take].tolist())
    validation = [p for p in test if tile[p] in val_tiles]
    rest = [p for p in test if tile[p] not in val_tiles]
    return {
        "dataset": root.name,
        "protocol": "tiles by frame-number gap > 150 over all crops; holdout = seeded share of train tiles; "
                    "validation = seeded third of test tiles per stratum (rarest defect type of the tile, or good)",
        "seed": seed,
        "holdout_fraction_of_tiles": holdout_fraction,
        "validation_fraction_of_tiles": val_fraction,
        "counts": {
            "fit": len(fit), "holdout": len(holdout), "validation": len(validation), "test_rest": len(rest),
            "train_tiles": len(train_tiles), "holdout_tiles": len(held_tiles), "test_tiles": len(kinds),
            "validation_tiles": len(val_tiles),
            "validation_by_type": dict(Counter(p.split("/")[1] for p in validation)),
            "test_rest_by_type": dict(Counter(p.split("/")[1] for p in rest)),
        },
        "fit": fit,
        "holdout": holdout,
        "validation": validation,
        "test_rest": rest,
    }


def load_split(path: Path = SPLIT_FILE) -> dict:
    return json.loads(Path(path).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--holdout-fraction", type=float, default=0.15)
    parser.add_argument("--val-fraction", type=float, default=1 / 3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", default=str(SPLIT_FILE))
    args = parser.parse_args()
    split = make_split(Path(args.data).resolve(), args.holdout_fraction, args.val_fraction, args.seed)
    Path(args.out).write_text(json.dumps(split, indent=1) + "\n")
    print(json.dumps(split["counts"], indent=1))


if __name__ == "__main__":
    main()
