"""Integer attention: QK^T and AV of every HaloAE attention block on 8-bit grids, in torch and in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edge_inspector.config import EngineSettings
from edge_inspector.engines.ort import load_session
from edge_inspector.engines.ort_profile import profile_kernels
from edge_inspector.data.synthetic import probe_from_goods
from edge_inspector.errors import ConfigError
from edge_inspector.export.onnx_export import export_onnx
from edge_inspector.export.qdq_attention import activation_matmuls, quantize_attention_matmuls
from edge_inspector.model.haloae import build_model
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.presets import load_preset
from edge_inspector.model.scorer import make_scorer
from edge_inspector.quantization.attention_quant import attention_quants
from edge_inspector.quantization.calibrate import CalibrateOptions, prepare
from edge_inspector.quantization.qdq_bundle import attention_grids, qdq_graph
from edge_inspector.quantization.raad import attention_table
from edge_inspector.quantization.units import apply_plan, set_mode

OVERRIDES = ["model.width=64", "model.height=64", "model.layers=[stage2]", "model.widths=[32,32,16]",
             "model.heads=[2,2]", "model.kernels=[3,3]", "score.head=reconstruction"]
BLOCKS = ["model.encoder.0.attention", "model.encoder.1.attention", "model.decoder.0.attention",
          "model.decoder.1.attention"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(calibrated tiny HaloAE scorer, its units, FP32 graph exported from it, images): every unit W8A8."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = load_preset("haloae-lite", OVERRIDES)
    scorer = make_scorer(build_model(preset.model, pretrained=False).eval(), preset).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (7, 64, 64, 3)).astype(np.uint8)
    fit_normal_statistics(scorer, images[:4])
    units = prepare(scorer, images[:4], CalibrateOptions())
    set_mode(scorer, "float")
    fp32 = onnx.load(str(export_onnx(scorer, tmp_path_factory.mktemp("attention") / "fp32.onnx")))
    return scorer, units, fp32, images


def _plan(units, attention: str = "w8a8") -> dict[str, str]:
    return {u.name: attention if u.kind == "attention" else "w8a8" for u in units}


def test_every_block_gets_two_integer_matmuls_with_the_probabilities_on_the_fixed_grid(calibrated):
    scorer, units, fp32, _ = calibrated
    quants = attention_quants(scorer)
    assert sorted(quants) == sorted(BLOCKS) == sorted(u.name for u in units if u.kind == "attention")
    for quant in quants.values():
        qk, av = quant.sites
        assert not qk.a_probabilities and av.a_probabilities
        assert float(av.a.scale()) == pytest.approx(1 / 255) and av.a.unsigned  # [0, 1], never clipped
        assert qk.a.batches.item() > 0 and qk.b.batches.item() > 0 and av.b.batches.item() > 0
    # the graph side finds the same two MatMuls per block: QK^T reads two computed tensors, AV the Softmax;
    # the relative-position MatMuls read a parameter and are not among them
    for block in BLOCKS:
        producers = {o: n.op_type for n in fp32.graph.node for o in n.output}
        found = activation_matmuls(fp32, block)
        assert len(found) == 2 and producers[found[1].input[0]] == "Softmax"


def test_onnxruntime_runs_integer_attention_kernels_equal_to_fake_quant_torch(calibrated):
    """Parity: ORT's integer graph against the fake-quant torch model, every unit and both matmuls of every block on
    8-bit grids. Stated tolerance: the score within 1e-3 relative, the map within 1e-3 of its largest value (seen
    here: 4e-6; integer kernels accumulate exactly, so only a value on a rounding boundary can differ)."""
    scorer, units, fp32, images = calibrated
    apply_plan(scorer, units, _plan(units))
    set_mode(scorer, "quant")
    graph = qdq_graph(scorer, fp32, small=False)
    with torch.no_grad():
        ref_map, ref_score = scorer(torch.from_numpy(images[4:]))
        set_mode(scorer, "float")
        float_map, _ = scorer(torch.from_numpy(images[4:]))
    session = load_session(graph, EngineSettings(intra_op_threads=1)).session
    outputs = [session.run(None, {"image": images[i : i + 1]}) for i in range(4, 7)]
    ort_map = np.concatenate([o[0] for o in outputs])
    ort_score = np.concatenate([o[1] for o in outputs])
    peak = np.abs(ref_map.numpy()).max()
    assert np.abs(ort_map - ref_map.numpy()).max() <= 1e-3 * peak
    np.testing.assert_allclose(ort_score, ref_score.numpy(), rtol=1e-3)
    assert np.abs(float_map.numpy() - ref_map.numpy()).max() > 1e-2 * peak  # quantization did change something
    profile = profile_kernels(graph, images[4], EngineSettings(intra_op_threads=1), runs=2, warmup=1)
    # QK^T (float relative logits are added to it): integer matmul to float; AV (read by the quantized out
    # projection): integer in, integer out
    assert profile.count("MatMulIntegerToFloat") == len(BLOCKS)
    assert profile.count("QLinearMatMul") == len(BLOCKS)
    assert profile.count("Softmax") == len(BLOCKS)


def test_a_kept_attention_unit_keeps_its_matmuls_float(calibrated):
    scorer, units, fp32, images = calibrated
    apply_plan(scorer, units, {**_plan(units), BLOCKS[0]: "keep"})
    set_mode(scorer, "quant")
    assert not attention_quants(scorer)[BLOCKS[0]].quantized and attention_quants(scorer)[BLOCKS[1]].quantized
    graph = qdq_graph(scorer, fp32, small=False)
    quantized_inputs = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    for block in BLOCKS:
        reads = [all(i in quantized_inputs for i in n.input) for n in activation_matmuls(graph, block)]
        assert reads == ([False, False] if block == BLOCKS[0] else [True, True])


def test_grids_for_another_graph_are_refused(calibrated):
    scorer, _, fp32, _ = calibrated
    grids = attention_grids(attention_quants(scorer)[BLOCKS[0]])
    graph = onnx.ModelProto()
    graph.CopyFrom(fp32)
    with pytest.raises(ConfigError, match="2 activation MatMuls in the graph, 1 calibrated"):
        quantize_attention_matmuls(graph, {BLOCKS[0]: grids[:1]})
    with pytest.raises(ConfigError, match="0 activation MatMuls"):
        quantize_attention_matmuls(graph, {"model.no_such_block": grids})


def test_tensorrt_target_puts_the_probabilities_on_the_signed_grid(tmp_path):
    torch.set_num_threads(1)
    preset = load_preset("haloae-lite", OVERRIDES)
    scorer = make_scorer(build_model(preset.model, pretrained=False).eval(), preset).eval()
    images = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3)).astype(np.uint8)
    fit_normal_statistics(scorer, images)
    prepare(scorer, images, CalibrateOptions(target="tensorrt"))
    for quant in attention_quants(scorer).values():
        av = quant.sites[1]
        assert not av.a.unsigned and float(av.a.scale()) == pytest.approx(1 / 127)


def test_raad_table_measures_sharpness_and_how_much_each_plan_bends_the_attention():
    """On blocks with sharp attention (q and k scaled up), the table's entropy is below a uniform row's, and 4-bit
    projections bend the rows more than 8-bit ones over the normal cells, both more than FP32 (KL 0); on the few
    defect cells of two images only that both bend them."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = load_preset("haloae-lite", OVERRIDES)
    model = build_model(preset.model, pretrained=False).eval()
    with torch.no_grad():
        for name in BLOCKS:  # the untrained projections give q . k near 0: rows as flat as the position logits
            block = model.get_submodule(name.removeprefix("model."))
            block.to_q.weight.mul_(1000)
            block.to_k.weight.mul_(1000)
    scorer = make_scorer(model, preset).eval()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (6, 64, 64, 3)).astype(np.uint8)
    fit_normal_statistics(scorer, images[:4])
    units = prepare(scorer, images[:4], CalibrateOptions())
    probe = probe_from_goods(images[4:], 1)
    masks, labels = probe.all_masks(), probe.labels()
    tables = {precision: attention_table(scorer, units, probe.images(), masks, labels,
                                         {u.name: precision for u in units if u.kind == "attention"})
              for precision in ("keep", "w8a8", "w4a8")}
    for keep, w8, w4 in zip(*tables.values()):
        assert keep.block == w8.block == w4.block and keep.depth == w8.depth
        assert 0 < keep.entropy_normal < 0.9 * keep.max_entropy  # sharp, not uniform
        assert abs(keep.kl_normal) < 1e-5 and abs(keep.kl_defect) < 1e-5
        assert w4.kl_normal > w8.kl_normal > 1e-5 and min(w4.kl_defect, w8.kl_defect) > 1e-5
