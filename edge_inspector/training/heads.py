"""Which scoring head a bundle ships, and the scorer built with it.

``score.head: auto`` picks among reconstruction, location and fused on a probe set made only from the held-back
good training images: those images as normals plus one synthetic defect with an exact mask made from each
(one CutPaste, one scar and one Perlin paste each; ``data/synthetic.py``). The head with the best mean of image and pixel AUROC wins;
every candidate's figures go into the manifest, so the choice can be checked. Test images are never used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edge_inspector.data.synthetic import synthetic_defects
from edge_inspector.training.metrics import image_auroc, pixel_auroc
from edge_inspector.model.normal_stats import NormalStatistics, fit_normal_statistics, fit_scorer_statistics
from edge_inspector.model.scorer import SCORING_HEADS, AnomalyScorer, make_scorer, raw_maps_of

PROBE_SEED = 0
DEFECTS_PER_IMAGE = 3
"""One of each synthetic kind per held-back image: with ~60 held-back images, ~180 defects steady the choice."""


@dataclass
class HeadChoice:
    head: str
    """The head the scorer runs."""
    probe: dict[str, dict[str, float]] = field(default_factory=dict)
    """head -> {'image_auroc', 'pixel_auroc'} on the synthetic probe set (empty when the head was fixed)."""


def candidate_heads(model: torch.nn.Module) -> tuple[str, ...]:
    return SCORING_HEADS if getattr(model, "location", None) is not None else ("reconstruction",)


@torch.no_grad()
def choose_head(model: torch.nn.Module, preset, holdout: np.ndarray, progress: bool = False) -> HeadChoice:
    """The head with the best mean of image and pixel AUROC on holdout goods + synthetic defects made from them."""
    heads = candidate_heads(model)
    scorer = make_scorer(model, preset, head="fused" if len(heads) > 1 else "reconstruction")
    needed = ("reconstruction", "location") if len(heads) > 1 else ("reconstruction",)
    normal = raw_maps_of(scorer, holdout, needed, progress=progress, desc="probe goods")
    fit_scorer_statistics(scorer, normal)
    bases = np.repeat(holdout, DEFECTS_PER_IMAGE, axis=0)  # synthetic_defects cycles the kinds over its inputs
    defects, masks = synthetic_defects(bases, np.random.default_rng(PROBE_SEED))
    defective = raw_maps_of(scorer, defects, needed, progress=progress, desc="probe defects")
    raw = {name: torch.cat([normal[name], defective[name]]) for name in needed}
    labels = np.r_[np.zeros(len(holdout), bool), np.ones(len(defects), bool)]
    all_masks = np.concatenate([np.zeros((len(holdout), *masks.shape[1:]), bool), masks])[:, ::2, ::2]
    probe = {}
    for head in heads:
        scorer.head = head
        maps = scorer.refine(raw)
        scores = scorer.score(maps).numpy()
        probe[head] = {"image_auroc": image_auroc(scores, labels),
                       "pixel_auroc": pixel_auroc(maps[:, 0, ::2, ::2].numpy(), all_masks)}
    best = max(heads, key=lambda h: probe[h]["image_auroc"] + probe[h]["pixel_auroc"])  # ties: the first listed
    return HeadChoice(best, probe)


def build_scorer(
    model: torch.nn.Module, preset, holdout: np.ndarray, progress: bool = False
) -> tuple[AnomalyScorer, NormalStatistics, HeadChoice]:
    """The scorer that ships: its head (chosen when ``score.head`` is auto) and its normal statistics."""
    choice = choose_head(model, preset, holdout, progress) if preset.score.head == "auto" else HeadChoice(
        preset.score.head)
    scorer = make_scorer(model, preset, head=choice.head)
    stats = fit_normal_statistics(scorer, holdout, progress=progress)
    return scorer, stats, choice
