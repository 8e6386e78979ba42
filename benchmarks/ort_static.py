"""The ``ort_static`` control: ONNX Runtime's own ``quantize_static``, given the same refits the other variants get.

HQS and the uniform controls refit, after quantizing, what is fitted in closed form: the location head's Gaussians
on the quantized backbone's features, and the normal statistics (mean map, fusion standardisation) on the quantized
model's maps. ``quantize_static`` has no torch model to refit, so the refit runs on what its quantized graph
computes: a side graph (the scorer's raw reconstruction map and the backbone layers the location head reads) is
quantized by ``quantize_static`` with the same calibration images, so its tensors get the ranges they get in the full
graph; the location head is refitted on the fit images' layers from it, the normal statistics on the held-back
images' maps from it, and the full graph of the refitted model is then quantized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import load_session
from edge_inspector.export.onnx_export import OPSET, export_onnx
from edge_inspector.model.normal_stats import fit_scorer_statistics
from edge_inspector.model.scorer import heads_needed


def quantize_static(fp32: onnx.ModelProto, calibration: np.ndarray, work: Path, tag: str) -> onnx.ModelProto:
    """ONNX Runtime's own static QDQ quantization (per-channel int8 weights, its default uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{fp32.graph.input[0].name: img[None]} for img in calibration])

        def get_next(self):
            return next(self.items, None)

    src, dst = work / f"{tag}_fp32.onnx", work / f"{tag}_static.onnx"
    onnx.save(fp32, str(src))
    ort_quantize(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                 weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return onnx.load(str(dst))


class RawParts(nn.Module):
    """The scorer's raw reconstruction map (when its head uses it) and the backbone layers its location head
    reads (when it uses one), as graph outputs."""

    def __init__(self, scorer: nn.Module):
        super().__init__()
        self.scorer = scorer
        heads = heads_needed(scorer.head)
        self.reconstruction = "reconstruction" in heads
        self.layers = list(scorer.model.spec.location.layers) if "location" in heads else []

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        if self.reconstruction:
            out.append(self.scorer.raw_maps(images, ("reconstruction",))["reconstruction"])
        if self.layers:
            maps = self.scorer.model.backbone_maps(self.scorer.model.normalize(images))
            out += [maps[name] for name in self.layers]
        return tuple(out)


def _export(module: nn.Module, path: Path, height: int, width: int) -> onnx.ModelProto:
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    torch.onnx.export(module, (example,), str(path), input_names=["image"], opset_version=OPSET, dynamo=True,
                      external_data=False, verbose=False)
    return onnx.load(str(path))


def _run(graph: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    session = load_session(graph, EngineSettings(intra_op_threads=torch.get_num_threads())).session
    name = session.get_inputs()[0].name
    runs = [session.run(None, {name: image[None]}) for image in images]
    return [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]


@torch.no_grad()
def ort_static_refit(builder, scorer) -> tuple[onnx.ModelProto, dict]:
    """The refitted ``quantize_static`` graph of ``scorer`` (an FP32 scorer, fine-tuned as ``fp32_ft``)."""
    from benchmarks.hqs_variants import clean

    scorer.eval()
    calibration, work = builder.calibration(), builder.work
    parts = RawParts(scorer)
    side = quantize_static(_export(parts, work / "raw_parts.onnx", scorer.height, scorer.width), calibration, work,
                           "raw_parts")
    model = scorer.model
    raw = {}
    if parts.layers:
        fit_layers = _run(side, builder.fit_images)[int(parts.reconstruction):]
        model.location.fit(model.location_features(dict(zip(parts.layers, map(torch.from_numpy, fit_layers)))))
    held = [torch.from_numpy(a) for a in _run(side, builder.holdout)]
    if parts.reconstruction:
        raw["reconstruction"] = held[0]
    if parts.layers:
        raw["location"] = model.location_map(dict(zip(parts.layers, held[int(parts.reconstruction):])))
    fit_scorer_statistics(scorer, raw)
    fp32 = onnx.load(str(export_onnx(scorer, work / "ort_static_refit.onnx")))
    graph = clean(quantize_static(fp32, calibration, work, "ort_static"))
    return graph, {"refit": sorted(raw), "location_refit_on": "quantize_static side graph" if parts.layers else None}
