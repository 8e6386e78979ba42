"""The QDQ graph and bundle of a calibrated, bit-planned scorer: the torch fake-quant model's own codes and scales
written into the FP32 graph exported from the same scorer (``export.qdq`` does the ONNX side)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from edge_inspector.bundle.graph_size import initializer_bytes
from edge_inspector.bundle.manifest import QuantizationSpec, Thresholds
from edge_inspector.bundle.store import Bundle, sha256_file, write_bundle
from edge_inspector.export.initializers import dedupe_initializers, narrow_index_initializers
from edge_inspector.export.qdq_attention import MatmulQuant, OperandGrid, quantize_attention_matmuls
from edge_inspector.export.qdq import ConvQuant, blocked_int8_weight, insert_qdq, quantize_matmul_input
from edge_inspector.model.normal_stats import NormalStatistics
from edge_inspector.model.scorer import heads_needed
from edge_inspector.quantization.attention_quant import AttentionQuant, attention_quants
from edge_inspector.quantization.calibrate import CalibrateOptions, HqsResult
from edge_inspector.quantization.fakequant import BIAS_QMAX, QuantConv2d
from edge_inspector.quantization.units import quant_modules, set_mode


def conv_quant_from_module(module: QuantConv2d) -> ConvQuant:
    """Read the integer codes and scales a calibrated ``QuantConv2d`` uses in its forward."""
    codes, w_scale, bias = module.quantized_params()
    scales = module.act_scales()
    w_scale_np = w_scale.detach().cpu().numpy().astype(np.float32)
    bias_codes = None
    if bias is not None:
        grid = np.float32(scales.input) * w_scale_np
        codes_f = np.round(bias.cpu().numpy().astype(np.float32) / grid)
        bias_codes = np.clip(codes_f, -BIAS_QMAX, BIAS_QMAX).astype(np.int32)
    return ConvQuant(
        codes=codes.cpu().numpy().astype(np.int8),
        weight_scale=w_scale_np,
        bits=module.weight_bits,
        qmax=module.weight_qmax,
        bias_codes=bias_codes,
        input_scale=scales.input,
        output_scale=scales.output,
        reference=module.conv.weight.detach().cpu().numpy(),
        input_unsigned=scales.input_unsigned,
        output_unsigned=scales.output_unsigned,
        input_shared=module.shares_input_grid,
    )


def attention_grids(quant: AttentionQuant) -> list[MatmulQuant]:
    """The grids of a calibrated block's activation matmuls, as its forward uses them."""
    def grid(observer) -> OperandGrid:
        return OperandGrid(float(observer.scale()), observer.unsigned)

    return [MatmulQuant(grid(site.a), grid(site.b)) for site in quant.sites]


LOCATION_FACTOR = "model.location.cell_precision_factor"


def qdq_graph(scorer: nn.Module, fp32: onnx.ModelProto, small: bool) -> onnx.ModelProto:
    """The QDQ graph of a calibrated, bit-planned scorer (``fp32`` exported from the same scorer)."""
    convs = {n: conv_quant_from_module(m) for n, m in quant_modules(scorer).items() if m.precision != "keep"}
    graph = insert_qdq(fp32, convs, small=small)
    quantize_attention_matmuls(graph, {name: attention_grids(quant) for name, quant in attention_quants(scorer).items()
                                       if quant.enabled})
    location = getattr(scorer.model, "location", None)
    if "location" in heads_needed(scorer.head) and location is not None and location.factor_codes is not None:
        codes, scales = location.factor_codes
        blocked_int8_weight(graph, LOCATION_FACTOR, codes.numpy(), scales.numpy(), axis=1)
        quantize_matmul_input(graph, LOCATION_FACTOR, location.input_scale)
    dedupe_initializers(graph)
    narrow_index_initializers(graph)
    return graph


def export_qdq_bundle(scorer: nn.Module, fp32_bundle: Bundle, out_dir: Path, result: HqsResult,
                      options: CalibrateOptions, plan_name: str, stats: NormalStatistics, thresholds: Thresholds,
                      holdout: np.ndarray) -> tuple[Bundle, onnx.ModelProto]:
    """Rewrite an FP32 bundle exported from ``scorer`` (float mode) into the QDQ bundle at ``out_dir``.

    Args:
        result: the HQS run (its bit plan goes to the manifest).
        options: its options (INT4 storage, target engine).
        plan_name: the plan files' name (``calibration/<plan_name>.yaml``).
        stats, thresholds: the quantized model's normal statistics and thresholds.
        holdout: held-back good images; the first few ship for parity checks.
    """
    fp32 = onnx.load(str(fp32_bundle.onnx_path))
    set_mode(scorer, "quant")
    graph = qdq_graph(scorer, fp32, options.small)
    softmax = [n.name for n in graph.graph.node if n.op_type == "Softmax"]
    with tempfile.TemporaryDirectory(prefix="ei-qdq-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(graph, str(path))
        manifest = fp32_bundle.manifest.model_copy(deep=True)
        digest = sha256_file(path)
        manifest.model_id = f"{manifest.model_id.rsplit('-', 1)[0]}-{digest[:8]}"
        manifest.quantization = QuantizationSpec(
            precision="qdq",
            bit_plan=result.plan,
            keep_fp32_nodes=softmax,
            weight_bytes=initializer_bytes(graph),
            table=f"calibration/{plan_name}.yaml",
            target=options.target,
            weight_codes=result.target.weight_codes,
            weight_codes_reason=result.target.weight_codes_reason,
        )
        manifest.score.image, manifest.score.pixel = stats.image, stats.pixel
        manifest.thresholds = thresholds
        bundle = write_bundle(out_dir, path, manifest, holdout)
    return bundle, graph
