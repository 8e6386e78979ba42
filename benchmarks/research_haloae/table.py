"""Print the validation log (results/research_haloae13_validation.jsonl) as a table, with per-type figures.

    .venv/bin/python benchmarks/research_haloae/table.py [--name SUBSTR] [--variant SUBSTR] [--types]
"""

from __future__ import annotations

import argparse
import json

from explore import LOG

TYPES = ("blowhole", "break", "crack", "fray", "uneven")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="")
    parser.add_argument("--variant", default="")
    parser.add_argument("--part", default="validation")
    parser.add_argument("--types", action="store_true", help="per-type image AUROC / AUPRO")
    parser.add_argument("--log", default=str(LOG))
    args = parser.parse_args()
    for line in open(args.log):
        row = json.loads(line)
        if args.name not in row["config"]["name"] or args.variant not in row["variant"] or row["part"] != args.part:
            continue
        m = row["metrics"]
        text = (f"{row['config']['name']:<30} {row['variant']:<30} {m['image_auroc']:.3f} {m['pixel_auroc']:.3f} "
                f"{m['aupro']:.3f} f1 {m.get('pixel_f1', float('nan')):.3f} | mean/type {m['type_mean']['image_auroc']:.3f} "
                f"{m['type_mean']['pixel_auroc']:.3f} {m['type_mean']['aupro']:.3f}")
        if args.types:
            text += " | " + " ".join(f"{t[:4]} {m['per_type'][t]['image_auroc']:.2f}/{m['per_type'][t]['pixel_auroc']:.2f}/"
                                     f"{m['per_type'][t]['aupro']:.2f}" for t in TYPES if t in m["per_type"])
        print(text)


if __name__ == "__main__":
    main()
