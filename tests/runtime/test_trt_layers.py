"""TensorRT's per-layer engine information turned into the side-car's precision table, and the INT8 warnings.

The JSON below has the shape TensorRT's engine inspector documents for ``ProfilingVerbosity.DETAILED`` (layer name
of fused ONNX nodes joined by ' + ', LayerType, ParameterType, 'Format/Datatype' texts, tactic, ONNX metadata). It is
written by hand for the conv fixture graph: it tests our reading of that format, not what TensorRT builds.
"""

from __future__ import annotations

import json

from edge_inspector.engines import trt_layers
from tests.fixtures.trt_graphs import conv_graph

INT8_FORMAT = "Thirty-two wide channel vectorized row major Int8 format"
ENGINE_INFORMATION = {
    "Layers": [
        {"Name": "cast_in + to_nchw + normalise + in_q", "LayerType": "PointWiseV2",
         "Inputs": [{"Name": "image", "Dimensions": [1, 32, 32, 3], "Format/Datatype": "Row major linear UInt8 format"}],
         "Outputs": [{"Name": "in_q", "Format/Datatype": INT8_FORMAT}], "TacticValue": "0x0000000000000009",
         "Metadata": "[ONNX Layer: cast_in]\x1e[ONNX Layer: to_nchw]\x1e[ONNX Layer: normalise]\x1e[ONNX Layer: in_q]"},
        {"Name": "in_dq + conv1 + relu1 + mid_q", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Name": "in_q", "Format/Datatype": INT8_FORMAT}],
         "Outputs": [{"Name": "mid_q", "Format/Datatype": INT8_FORMAT}],
         "TacticName": "sm87_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32", "TacticValue": "0x5e4b"},
        {"Name": "mid_dq", "LayerType": "Scale",
         "Inputs": [{"Name": "mid_q", "Format/Datatype": INT8_FORMAT}],
         "Outputs": [{"Name": "mid_dq", "Format/Datatype": "Row major linear FP16 format"}], "TacticValue": "0x0"},
        {"Name": "conv2", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Name": "mid_dq", "Format/Datatype": "Row major linear FP16 format"}],
         "Outputs": [{"Name": "c2", "Format/Datatype": "Row major linear FP16 format"}],
         "TacticName": "sm87_xmma_fprop_implicit_gemm_f16f16_f16f16_f16", "TacticValue": "0x77"},
        {"Name": "attn_softmax", "LayerType": "CaskSoftmaxV2",
         "Inputs": [{"Name": "c2_fp32", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "attn", "Format/Datatype": "Row major linear FP32"}], "TacticValue": "0x1"},
    ],
    "Bindings": ["image", "anomaly_map", "score"],
}


def test_tensor_formats_name_their_precision():
    assert trt_layers.tensor_precision(INT8_FORMAT) == "INT8"
    assert trt_layers.tensor_precision("Row major linear UInt8 format") == "UINT8"
    assert trt_layers.tensor_precision("Row major linear FP16 format") == "FP16"
    assert trt_layers.tensor_precision("Half") == "FP16"
    assert trt_layers.tensor_precision("Float") == "FP32"
    assert trt_layers.tensor_precision("N/A due to dynamic shapes") == "unknown"


def test_layers_carry_precision_tactic_and_their_onnx_nodes():
    layers = trt_layers.parse_engine_information(json.dumps(ENGINE_INFORMATION))
    conv1 = layers[1]
    assert (conv1.precision, conv1.convolution, conv1.tactic) == (
        "INT8", True, "sm87_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32")
    assert conv1.onnx_nodes == ("in_dq", "conv1", "relu1", "mid_q")
    assert layers[0].onnx_nodes == ("cast_in", "to_nchw", "normalise", "in_q")  # from the metadata
    assert layers[4].precision == "FP32" and layers[4].tactic == "0x1"
    assert conv1.to_dict()["onnx_nodes"] == ["in_dq", "conv1", "relu1", "mid_q"]


def test_summary_counts_int8_convolutions_and_warns_about_what_did_not_fuse():
    graph = conv_graph(32, 32, qdq=True)
    quantized = trt_layers.quantized_convolutions(graph)
    assert quantized == ["conv1"]  # conv2 reads a DequantizeLinear but has float weights
    layers = trt_layers.parse_engine_information(ENGINE_INFORMATION)
    summary = trt_layers.summarize(layers, trt_layers.qdq_node_names(graph), quantized)
    assert summary == {"layers": 5, "convolutions": {"FP16": 1, "INT8": 1},
                       "quantized_convolutions_in_graph": 1, "unfused_qdq_layers": ["mid_dq"]}
    (warning,) = trt_layers.summary_warnings(summary)
    assert warning.startswith("1 Q/DQ layers were not fused into a neighbouring layer") and "mid_dq" in warning
    assert trt_layers.summary_line(summary) == (
        "convolutions FP16 1, INT8 1 (1 quantized in the graph); unfused Q/DQ layers: 1")


def test_quantized_convolutions_running_in_fp16_are_reported():
    layers = trt_layers.parse_engine_information(ENGINE_INFORMATION)
    summary = trt_layers.summarize(layers, set(), ["conv1", "conv2"])
    assert summary["unfused_qdq_layers"] == []
    assert trt_layers.summary_warnings(summary) == [
        "the graph has 2 convolutions behind Q/DQ but only 1 run as INT8 kernels; the rest run in higher precision "
        "(see engine_layers in the plan side-car)"]


def test_names_only_information_says_precision_is_unknown():
    """Built without DETAILED verbosity the inspector lists names only: nothing may be claimed INT8."""
    layers = trt_layers.parse_engine_information({"Layers": ["in_dq + conv1 + relu1", "conv2"]})
    assert {layer.precision for layer in layers} == {"unknown"}
    summary = trt_layers.summarize(layers, set(), ["conv1"])
    assert summary["convolutions"] == {} and len(trt_layers.summary_warnings(summary)) == 1
