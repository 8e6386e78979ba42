"""Train auto-encoder variants on cached features and score them on the validation slice (issue 13 research).

One call trains one configuration (``--config`` JSON, merged over ``BASE``) and evaluates every scoring variant of
it (reconstruction measure x normalisation x fusion with the location head) on the validation slice of test and on
synthetic defects over the holdout. Each variant is one line of ``results/research_haloae13_validation.jsonl``,
winners and losers alike. ``--final`` evaluates on test-rest and the full test split instead (only for the chosen
recipe, after the design is frozen).

    nice -n 10 .venv/bin/python benchmarks/research_haloae/explore.py --config '{"name": "base", "steps": 3000}'
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aemodel import ResearchAE
from features import STAGE_CHANNELS, Cache
from scoremaps import Evaluator, location_maps

from edge_inspector.training.losses import ssim

HERE = Path(__file__).resolve().parent
LOG = HERE.parent / "results" / "research_haloae13_validation.jsonl"
FINAL_LOG = HERE.parent / "results" / "research_haloae13_final.jsonl"
MODELS = HERE.parent / "work" / "research_haloae" / "models"

BASE = {
    "name": "base",
    "size": [256, 256],
    "layers": ["stage2", "stage3", "stage5"],
    "grid_stride": 8,
    "ae": {},
    "steps": 3000,
    "batch": 16,
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "warmup": 0.02,
    "loss_cos": 0.0,
    "loss_ssim": 0.0,
    "noise": 0.0,
    "denoise": 0.0,
    "featpaste": 0.0,
    "seed": 0,
    "probe": False,
    "eval_reduce": 2,
    "variants": None,
    "locations": ["loc8", "loc16"],
    "measures": ["local_mse", "local_stagemse"],
    "weights": [1.0],
}


def stage_slices(layers: list[str]) -> list[slice]:
    out, start = [], 0
    for name in layers:
        out.append(slice(start, start + STAGE_CHANNELS[name]))
        start += STAGE_CHANNELS[name]
    return out


def cosine_loss(pred, target, slices):
    return sum((1 - F.cosine_similarity(pred[:, s], target[:, s], dim=1)).mean() for s in slices) / len(slices)


def feature_paste(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Paste a random rectangle of cells from another image of the batch at another place (feature CutPaste)."""
    n, _, h, w = x.shape
    out = x.clone()
    for i in range(n):
        ph, pw = (int(v) for v in torch.randint(2, max(3, h // 3), (2,), generator=gen))
        sy, sx, ty, tx = (int(torch.randint(0, lim, (1,), generator=gen)) for lim in (h - ph, w - pw, h - ph, w - pw))
        j = int(torch.randint(0, n, (1,), generator=gen))
        out[i, :, ty : ty + ph, tx : tx + pw] = x[j, :, sy : sy + ph, sx : sx + pw]
    return out


class Prepared:
    """Standardised grids of every protocol part for one configuration's layers and size."""

    def __init__(self, cache: Cache, cfg: dict, with_corrupt: bool):
        w, h = cfg["size"]
        self.grid = (h // cfg["grid_stride"], w // cfg["grid_stride"])
        layers = cfg["layers"]
        self.fit_index = cache.train_index("fit")
        self.holdout_index = cache.train_index("holdout")
        fit = cache.train.grid(layers, self.grid, self.fit_index)
        self.mean = fit.mean(dim=(0, 2, 3), keepdim=True)
        std = fit.std(dim=(0, 2, 3), keepdim=True)
        self.std = std.clamp_min(1e-2 * float(std.mean()) + 1e-6)
        self.fit = self.norm(fit)
        self.holdout = self.norm(cache.train.grid(layers, self.grid, self.holdout_index))
        self.corrupt = self.corrupt_source = None
        if with_corrupt:
            self.corrupt = self.norm(cache.corrupt.grid(layers, self.grid))
            row = {int(t): i for i, t in enumerate(self.fit_index)}
            self.corrupt_source = torch.tensor([row[int(s)] for s in cache.corrupt.source])

    def norm(self, grid: torch.Tensor) -> torch.Tensor:
        return ((grid - self.mean) / self.std).half()


def train(cfg: dict, data: Prepared) -> tuple[ResearchAE, dict]:
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    c_feat = data.fit.shape[1]
    model = ResearchAE(c_feat, data.grid, cfg["ae"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = cfg["steps"], max(1, int(cfg["warmup"] * cfg["steps"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    slices = stage_slices(cfg["layers"])
    by_source: dict[int, list[int]] = {}
    if data.corrupt is not None:
        for i, s in enumerate(data.corrupt_source.tolist()):
            by_source.setdefault(s, []).append(i)
    model.train()
    started, log_every, running = time.perf_counter(), max(1, steps // 10), []
    for step in range(steps):
        idx = torch.randint(0, len(data.fit), (cfg["batch"],), generator=gen)
        target = data.fit[idx].float()
        x = target.clone()
        if cfg["denoise"] > 0:
            use = torch.rand(len(idx), generator=gen) < cfg["denoise"]
            for i in torch.nonzero(use).flatten().tolist():
                options = by_source[int(idx[i])]
                x[i] = data.corrupt[options[int(torch.randint(0, len(options), (1,), generator=gen))]].float()
        if cfg["featpaste"] > 0 and float(torch.rand(1, generator=gen)) < cfg["featpaste"]:
            x = feature_paste(x, gen)
        if cfg["noise"] > 0:
            x = x + cfg["noise"] * torch.randn(x.shape, generator=gen)
        out = model(x)
        loss = F.mse_loss(out["local"], target)
        if cfg["loss_cos"]:
            loss = loss + cfg["loss_cos"] * cosine_loss(out["local"], target, slices)
        if cfg["loss_ssim"]:
            loss = loss + cfg["loss_ssim"] * (1 - ssim(out["local"], target))
        if "global" in out:
            loss = loss + F.mse_loss(out["global"], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps} loss {np.mean(running[-log_every:]):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    return model, {"train_s": time.perf_counter() - started, "final_loss": float(np.mean(running[-log_every:]))}


@torch.no_grad()
def reconstruct(model: ResearchAE, grids: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(grids), batch):
        for k, v in model(grids[start : start + batch].float()).items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def error_maps(model: ResearchAE, grids: torch.Tensor, data: Prepared, layers: list[str]) -> dict[str, torch.Tensor]:
    """Raw (N, 1, gh, gw) maps of every reconstruction measure."""
    recon = reconstruct(model, grids)
    f = grids.float()
    out = {}
    for branch, f_hat in recon.items():
        err = (f - f_hat).square()
        out[f"{branch}_mse"] = err.mean(1, keepdim=True)
        slices = stage_slices(layers)
        # per-stage mean error, each stage weighted equally (a stage with many channels no longer dominates)
        out[f"{branch}_stagemse"] = sum(err[:, s].mean(1, keepdim=True) for s in slices) / len(slices)
        raw, raw_hat = f * data.std + data.mean, f_hat * data.std + data.mean
        out[f"{branch}_cos"] = sum(1 - F.cosine_similarity(raw[:, s], raw_hat[:, s], dim=1).unsqueeze(1)
                                   for s in slices) / len(slices)
    return out


def run(cfg: dict, final: bool, cache: Cache) -> list[dict]:
    data = Prepared(cache, cfg, with_corrupt=cfg["denoise"] > 0)
    model, info = train(cfg, data)
    MODELS.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "state": model.state_dict(), "mean": data.mean, "std": data.std},
               MODELS / f"{cfg['name']}.pt")
    ev = Evaluator(cache, cfg["size"], data.grid, reduce=1 if final else cfg["eval_reduce"])
    parts = (["validation"] + (["probe"] if cfg["probe"] else [])) if not final else ["test_rest", "full"]
    grids = {"holdout": data.holdout}
    for part in parts:
        grids[part] = data.norm(ev.grid_of(part, cfg["layers"]))
    raw = {part: error_maps(model, g, data, cfg["layers"]) for part, g in grids.items()}
    for which in cfg["locations"]:
        loc = location_maps(cache, data.grid, parts, which)
        for part in raw:
            raw[part][which] = loc[part]
    rows = []
    started = time.perf_counter()
    for variant, maps in ev.variants(raw, cfg["measures"], tuple(cfg["weights"])).items():
        if cfg["variants"] and variant not in cfg["variants"]:
            continue
        for part in parts:
            rows.append({"config": cfg, "variant": variant, "part": part, **info,
                         "metrics": ev.evaluate(part, maps[part], maps["holdout"])})
    print(f"  evaluated {len(rows)} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def summary_line(row: dict) -> str:
    m = row["metrics"]
    return (f"{row['config']['name']:<28} {row['variant']:<34} {row['part']:<10} image {m['image_auroc']:.3f} "
            f"pixel {m.get('pixel_auroc', float('nan')):.3f} aupro {m.get('aupro', float('nan')):.3f} | "
            f"type-mean {m['type_mean']['image_auroc']:.3f}/{m['type_mean'].get('pixel_auroc', float('nan')):.3f}/"
            f"{m['type_mean'].get('aupro', float('nan')):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="JSON merged over BASE (repeatable)")
    parser.add_argument("--final", action="store_true", help="evaluate on test-rest and full test (frozen recipe)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    caches: dict[tuple, Cache] = {}
    for text in args.config:
        cfg = {**BASE, **json.loads(text)}
        cfg["ae"] = {**cfg["ae"]}
        key = tuple(cfg["size"])
        cache = caches.setdefault(key, Cache(*cfg["size"]))
        print(f"== {cfg['name']}: {json.dumps(cfg)}", flush=True)
        rows = run(cfg, args.final, cache)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with open(FINAL_LOG if args.final else LOG, "a") as fh:
            for row in rows:
                fh.write(json.dumps({"created": stamp, "command": shlex.join(sys.argv), **row}) + "\n")
        for row in rows:
            print(summary_line(row), flush=True)


if __name__ == "__main__":
    main()
