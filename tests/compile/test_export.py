"""Export to a model bundle: static uint8 NHWC input, named raw outputs, pinned opset, manifest, ORT vs torch parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edge_inspector.bundle.manifest import TrainingInfo
from edge_inspector.bundle.store import load_bundle
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import BundleError
from edge_inspector.bundle.thresholds import ThresholdPolicy
from edge_inspector.export.onnx_export import OPSET, export_bundle
from edge_inspector.export.parity import MAP_RTOL, check_parity
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import AnomalyScorer, ScorerOutput, run_scorer
from tests.compile.stand_in_model import StandInModel

torch.set_num_threads(1)
H, W = 32, 48  # not square: the static shape must keep height and width apart


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(0)
    holdout = rng.integers(90, 110, (6, H, W, 3), dtype=np.uint8)
    scorer = AnomalyScorer(StandInModel(), H, W, "topk", topk_fraction=0.02, blur_sigma=1.0)
    stats = fit_normal_statistics(scorer, holdout)
    thresholds = stats.thresholds(ThresholdPolicy(0.1, 0.01))
    info = TrainingInfo(preset="stand-in", backbone="none", dataset="synthetic", data_fingerprint="0" * 64,
                        n_fit=0, n_holdout=6, epochs=0, seed=0)
    out = tmp_path_factory.mktemp("bundle")
    bundle = export_bundle(scorer, out, "synthetic-stand-in", "stretch", stats, thresholds, info, holdout)
    return scorer, bundle, holdout, stats


def test_graph_contract(exported):
    _, bundle, _, _ = exported
    model = onnx.load(str(bundle.onnx_path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, H, W, 3]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    assert not any(n.op_type == "ConvTranspose" for n in model.graph.node)


def test_output_names_come_from_the_scorer_output_type(exported):
    """The typed output's field names are the graph's output names and the manifest's, in one place."""
    scorer, bundle, holdout, _ = exported
    out = scorer(torch.from_numpy(holdout[:2]))
    assert isinstance(out, ScorerOutput) and out.anomaly_map.shape == (2, 1, H, W) and out.score.shape == (2,)
    graph = onnx.load(str(bundle.onnx_path))
    assert tuple(o.name for o in graph.graph.output) == ScorerOutput._fields
    outputs = load_bundle(bundle.path).manifest.outputs
    assert (outputs.anomaly_map, outputs.score) == ScorerOutput._fields


def test_manifest_and_calibration_images(exported):
    scorer, bundle, holdout, stats = exported
    reopened = load_bundle(bundle.path)  # verifies the graph hash
    m = reopened.manifest
    assert (m.input.width, m.input.height, m.input.dtype, m.input.layout) == (W, H, "uint8", "NHWC")
    assert m.model_id.startswith("synthetic-stand-in-") and m.graph.opset == OPSET
    assert m.score.aggregation == "topk" and m.score.topk_fraction == 0.02
    assert m.score.image.n == 6 and m.thresholds.target_false_reject_rate == 0.1
    assert m.thresholds.target_pixel_false_positive_rate == 0.01
    assert m.thresholds.image > np.quantile(stats.image_scores, 0.85)
    assert m.training.n_holdout == 6 and "onnxruntime" in m.versions
    np.testing.assert_array_equal(reopened.calibration_images(), holdout)


def test_onnxruntime_matches_torch(exported):
    scorer, bundle, holdout, _ = exported
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, H, W, 3), dtype=np.uint8)
    report = check_parity(scorer, bundle, images)
    assert report.passed and report.n_images == 3 and report.map_rel_diff <= MAP_RTOL
    engine = OrtEngine(bundle)
    maps, scores = run_scorer(scorer, images)
    out = engine.infer(images[0])
    np.testing.assert_allclose(out.anomaly_map, maps[0], rtol=1e-4, atol=1e-6 * maps[0].max())
    assert out.score == pytest.approx(float(scores[0]), rel=1e-4)


def test_parity_catches_a_graph_that_differs(exported):
    scorer, bundle, holdout, _ = exported
    other = AnomalyScorer(StandInModel(), H, W, "topk", topk_fraction=0.02, blur_sigma=1.0)
    other.mean_map = scorer.mean_map * 0.5  # a different normal map than the one exported
    with pytest.raises(BundleError, match="differs from torch"):
        check_parity(other, bundle, holdout)
