"""HQS stage 2: quantization-aware fine-tuning of the bit-planned model (straight-through estimator, lr 1e-5).

Loss per step, on a batch of good training images and their CutPaste copies:

* the HaloAE loss itself (classification + feature and image reconstruction, at the schedule's end-of-training
  weights), so the model keeps doing its own job;
* distillation to the FP32 model: the student's feature reconstruction of the good images should equal the
  teacher's;
* an anomaly-map term on good images and on synthetic defects (exact masks): the student's raw error map should
  equal the teacher's, with pixel weights ``1 + defect_weight * mask + invariant_weight * invariant``, where
  *invariant* marks grid cells whose normal error barely varies across good images (RAAD's "invariant regions":
  a small drift there shifts every image's score, and nothing else in the loss looks at them).

BatchNorm was folded into the convs before quantization, so it is frozen by construction; the backbone stays frozen.
The same routine with quantization switched off is the "FP32 fine-tuned for the same steps" control.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edge_inspector.data.synthetic import synthetic_defects
from edge_inspector.quantization.units import set_mode


@dataclass
class QatOptions:
    steps: int = 100
    lr: float = 1e-5
    batch_size: int = 2
    """Good originals per step (each brings two CutPaste copies and one synthetic defect)."""
    distill_weight: float = 1.0
    map_weight: float = 1.0
    defect_weight: float = 4.0
    invariant_weight: float = 2.0
    invariant_quantile: float = 0.25
    """Cells whose normal-error std is below this quantile count as invariant."""
    seed: int = 0


@dataclass
class QatReport:
    steps: int
    losses: dict[str, float] = field(default_factory=dict)
    """Mean of each loss term over the last 10 steps."""
    history: list[float] = field(default_factory=list)


@torch.no_grad()
def invariant_cells(teacher: nn.Module, images: np.ndarray, quantile: float, batch_size: int = 8) -> torch.Tensor:
    """(1, 1, gh, gw) 0/1 map of grid cells whose FP32 normal error varies least across ``images``."""
    maps = []
    for start in range(0, len(images), batch_size):
        x = teacher.normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
        maps.append(teacher.error_map(x))
    std = torch.cat(maps).std(dim=0, keepdim=True)
    return (std <= torch.quantile(std.flatten(), quantile)).float()


def finetune(
    scorer: nn.Module,
    images: np.ndarray,
    preset,
    options: QatOptions,
    quantized: bool = True,
    progress: bool = True,
) -> QatReport:
    """Fine-tune ``scorer.model`` in place (a wrapped, calibrated, bit-planned HaloAE when ``quantized``).

    Args:
        scorer: ``AnomalyScorer`` around the student HaloAE.
        images: uint8 (N, H, W, 3) good training images (the fit split, never holdout or test).
        preset: the model's preset (loss schedule, flips).
        quantized: False fine-tunes in FP32 (the control of the benchmark).
    """
    from edge_inspector.data.augment import cutpaste_batch
    from edge_inspector.training.losses import haloae_loss, loss_weights

    if options.steps <= 0:
        return QatReport(0)
    student = scorer.model
    set_mode(scorer, "float")
    teacher = copy.deepcopy(student).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    set_mode(scorer, "quant" if quantized else "float")
    invariant = invariant_cells(teacher, images[: min(len(images), 32)], options.invariant_quantile)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.lr)
    weights = loss_weights(1.0, preset.train.loss)
    rng = np.random.default_rng(options.seed)
    grid = invariant.shape[-2:]
    student.eval()  # BN is folded and the backbone frozen: eval mode is the "frozen BN" of QAT
    report = QatReport(options.steps)
    terms_log: list[dict[str, float]] = []
    for _ in tqdm(range(options.steps), desc="QAT" if quantized else "FP32 fine-tune", disable=not progress):
        originals = images[rng.choice(len(images), options.batch_size, replace=len(images) < options.batch_size)]
        batch, labels = cutpaste_batch(originals, rng)
        defects, masks = synthetic_defects(originals, rng)
        x = student.normalize(torch.from_numpy(batch))
        x_def = student.normalize(torch.from_numpy(defects))
        n = len(originals)
        out = student(x, n_decode=n)
        base, _ = haloae_loss(out, x, torch.from_numpy(labels), weights)
        with torch.no_grad():
            f_t = teacher.features(x[:n])
            recon_t = teacher.reconstruct(f_t)
            both = torch.cat([x[:n], x_def])
            err_t = teacher.error_map(both)
        distill = F.mse_loss(out.reconstruction, recon_t) / recon_t.square().mean().clamp(min=1e-12)
        err_s = student.error_map(both)
        mask_grid = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], grid)
        pixel_w = 1 + options.invariant_weight * invariant.expand(len(both), 1, *grid)
        pixel_w = pixel_w + options.defect_weight * torch.cat([torch.zeros_like(mask_grid), mask_grid])
        map_term = (pixel_w * (err_s - err_t).square()).mean() / err_t.mean().square().clamp(min=1e-12)
        loss = base + options.distill_weight * distill + options.map_weight * map_term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        terms = {"loss": loss, "haloae": base, "distill": distill, "map": map_term}
        terms_log.append({k: float(v.detach()) for k, v in terms.items()})
        report.history.append(terms_log[-1]["loss"])
    tail = terms_log[-10:]
    report.losses = {k: float(np.mean([t[k] for t in tail])) for k in tail[0]}
    return report
