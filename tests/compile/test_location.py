"""The location head: per-cell Gaussian numerics, positional awareness, presets, scoring heads, export, head choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.errors import ConfigError, DataError
from edge_inspector.export.onnx_export import export_bundle
from edge_inspector.export.parity import check_parity
from edge_inspector.model.haloae import build_model
from edge_inspector.model.location import LocationGaussian
from edge_inspector.model.presets import load_preset
from edge_inspector.training.heads import build_scorer, choose_head
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import make_scorer, run_scorer
from edge_inspector.training.trainer import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
TINY = ["model.width=64", "model.height=64", "model.layers=[stage2]", "model.widths=[16,16]", "model.heads=[1]",
        "model.kernels=[3]", "model.location.grid_stride=16", "model.location.dims=8"]


def _reference_distance(train: np.ndarray, test: np.ndarray, dims: int, shrinkage: float) -> np.ndarray:
    """The head's definition, written plainly: standardise, global PCA, per-cell mean/covariance, Mahalanobis."""
    n, c, h, w = train.shape
    x = train.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    mean, std = x.mean(0), x.std(0, ddof=1)
    z = (x - mean) / std
    _, vectors = np.linalg.eigh(z.T @ z / len(z))
    components = vectors[:, -dims:]
    cells_train = (z @ components).reshape(n, h * w, dims)
    y = (((test.transpose(0, 2, 3, 1).reshape(-1, c) - mean) / std) @ components).reshape(len(test), h * w, dims)
    out = np.empty((len(test), h * w))
    for cell in range(h * w):
        samples = cells_train[:, cell]
        cov = np.cov(samples, rowvar=False) + shrinkage * np.eye(dims)
        diff = y[:, cell] - samples.mean(0)
        out[:, cell] = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff))
    return out.reshape(len(test), 1, h, w)


def test_distance_equals_a_plain_per_cell_mahalanobis():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(12, 12))
    train = np.einsum("nchw,cd->ndhw", rng.normal(size=(40, 12, 3, 4)), mixing) + rng.normal(size=(1, 12, 3, 4)) * 3
    test = np.einsum("nchw,cd->ndhw", rng.normal(size=(5, 12, 3, 4)), mixing)
    head = LocationGaussian(12, (3, 4), dims=6, shrinkage=0.05, blur_sigma=0)
    head.fit(torch.from_numpy(train).float())
    got = head(torch.from_numpy(test).float()).numpy()
    np.testing.assert_allclose(got, _reference_distance(train, test, 6, 0.05), rtol=2e-4, atol=2e-4)
    assert bool(head.fitted)


def test_a_feature_normal_elsewhere_is_anomalous_here():
    # Two fixed layouts: cell 0 always looks like "a", cell 1 like "b". A frame with them swapped holds only
    # normal-looking features, so a location-blind score cannot see it; the location head must.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8) * 3, rng.normal(size=8) * 3
    train = np.stack([np.stack([a, b], axis=1) + rng.normal(scale=0.3, size=(8, 2)) for _ in range(60)])[:, :, None]
    head = LocationGaussian(8, (1, 2), dims=8, shrinkage=0.01, blur_sigma=0)
    head.fit(torch.from_numpy(train).float())
    normal = torch.from_numpy(np.stack([a, b], axis=1)[None, :, None]).float()
    swapped = torch.from_numpy(np.stack([b, a], axis=1)[None, :, None]).float()
    assert float(head(swapped).min()) > 10 * float(head(normal).max())


def test_dims_are_capped_at_the_channels_and_fit_checks_its_input():
    head = LocationGaussian(4, (2, 2), dims=16, shrinkage=0.01, blur_sigma=0.5)
    assert head.dims == 4 and head.cell_precision_factor.shape == (4, 4, 4)
    with pytest.raises(ValueError, match=r"feature grids of \(2, 2\)"):
        head.fit(torch.zeros(5, 4, 3, 3))


def test_quantized_head_equals_its_integer_onnx_graph(tmp_path):
    """HQS stage 2 for the head: INT8 factors and an 8-bit input grid. The torch head (``quantize_input`` on)
    computes what ONNX Runtime runs, as ``MatMulInteger``, from the QDQ graph the bundle stores."""
    import onnx
    import onnxruntime as ort

    from edge_inspector.engines.ort_rewrites import prepare_for_onnxruntime
    from edge_inspector.export.qdq import blocked_int8_weight, quantize_matmul_input

    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(12, 12))
    train = np.einsum("nchw,cd->ndhw", rng.normal(size=(60, 12, 2, 3)), mixing)
    test = np.einsum("nchw,cd->ndhw", rng.normal(size=(4, 12, 2, 3)), mixing) * 1.5  # some beyond the fit range
    head = LocationGaussian(12, (2, 3), dims=6, shrinkage=0.05, blur_sigma=0)
    head.fit(torch.from_numpy(train).float())
    x = torch.from_numpy(test).float()
    exact = head(x)
    with pytest.raises(ValueError, match="call fit first"):
        LocationGaussian(12, (2, 3), dims=6, shrinkage=0.05, blur_sigma=0).quantize()
    codes, scales = head.quantize()
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 63 and scales.shape == (6, 1, 6)
    path = tmp_path / "head.onnx"
    torch.onnx.export(head, (x,), str(path), input_names=["x"], output_names=["d"], opset_version=21, dynamo=True,
                      external_data=False, verbose=False)
    graph = onnx.load(str(path))
    name = next(t.name for t in graph.graph.initializer if list(t.dims) == [6, 6, 6])
    blocked_int8_weight(graph, name, codes.numpy(), scales.numpy(), axis=1)
    quantize_matmul_input(graph, name, head.input_scale)
    assert prepare_for_onnxruntime(graph)["integer_matmuls"] == 1
    assert "MatMulInteger" in [n.op_type for n in graph.graph.node]
    head.quantize_input = True
    quantized = head(x)
    got = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": test.astype(np.float32)})[0]
    np.testing.assert_allclose(got, quantized.numpy(), rtol=1e-4, atol=1e-4)
    # the grids change the distance only a little, and the input grid matters: without it torch drifts from ORT
    assert float((quantized - exact).abs().max() / exact.abs().max()) < 0.05
    head.quantize_input = False
    assert not np.allclose(head(x).numpy(), got, rtol=1e-4, atol=1e-4)


def test_presets_validate_the_location_head():
    lite = load_preset("haloae-lite")
    assert lite.score.head == "fused" and lite.model.location.layers == ["stage4", "stage5", "stage6"]
    assert lite.model.location_grid == (16, 16) and lite.model.backbone_layers[-1] == "stage6"
    assert load_preset("haloae-paper").model.location is None
    with pytest.raises(ConfigError, match="score.head location needs the location head"):
        load_preset("haloae-paper", ["score.head=location"])
    with pytest.raises(ConfigError, match=r"location.layers \['stage9'\] unknown"):
        load_preset("haloae-lite", ["model.location.layers=[stage9]"])
    with pytest.raises(ConfigError, match="head"):
        load_preset("haloae-lite", ["score.head=nearest"])


@pytest.fixture(scope="module")
def fitted():
    """A tiny untrained HaloAE whose location head is fitted on images with a fixed bright band on top."""
    torch.manual_seed(0)
    preset = load_preset("haloae-lite", [*TINY, "score.head=auto"])
    model = build_model(preset.model, pretrained=False).eval()
    rng = np.random.default_rng(2)
    images = rng.integers(40, 80, (24, 64, 64, 3), dtype=np.uint8)
    images[:, :16] += 120  # the fixture: the top band is always bright
    model.set_feature_statistics(torch.from_numpy(images))
    model.fit_location(torch.from_numpy(images[:16]))
    return preset, model, images[:16], images[16:]


@pytest.mark.parametrize("head", ["location", "fused"])
def test_heads_export_and_onnx_runtime_matches_torch(fitted, head, tmp_path):
    preset, model, _, holdout = fitted
    scorer = make_scorer(model, preset, head=head)
    stats = fit_normal_statistics(scorer, holdout)
    bundle = export_bundle(scorer, tmp_path / head, "tiles", "stretch", stats,
                           stats.thresholds(), None, holdout)
    assert bundle.manifest.score.head == head
    report = check_parity(scorer, bundle)
    assert report.passed
    if head == "fused":  # standardised on the holdout: normal maps centre near zero
        assert abs(float(stats.pixel.mean)) < 1.5


def test_location_head_flags_a_missing_fixture_feature(fitted):
    preset, model, _, holdout = fitted
    scorer = make_scorer(model, preset, head="location")
    fit_normal_statistics(scorer, holdout)
    moved = holdout[:2].copy()
    moved[:, :16] -= 120  # the bright band is gone: every pixel is still an ordinary pixel value
    _, normal_scores = run_scorer(scorer, holdout)
    _, moved_scores = run_scorer(scorer, moved)
    assert moved_scores.min() > normal_scores.max()


def test_auto_head_reports_every_candidate_and_a_fixed_head_skips_the_probe(fitted):
    preset, model, _, holdout = fitted
    choice = choose_head(model, preset, holdout)
    assert set(choice.probe) == {"reconstruction", "location", "fused"} and choice.head in choice.probe
    best = max(v["image_auroc"] + v["pixel_auroc"] for v in choice.probe.values())
    assert choice.probe[choice.head]["image_auroc"] + choice.probe[choice.head]["pixel_auroc"] == best
    fixed = load_preset("haloae-lite", [*TINY, "score.head=reconstruction"])
    scorer, _, fixed_choice = build_scorer(model, fixed, holdout)
    assert scorer.head == "reconstruction" and fixed_choice.probe == {}
    with pytest.raises(ValueError, match="auto"):
        make_scorer(model, preset)


def test_checkpoint_keeps_the_fitted_head_and_refuses_an_old_version(fitted, tmp_path):
    preset, model, _, holdout = fitted
    path = save_checkpoint(tmp_path / "m.pt", model, preset)
    loaded, _ = load_checkpoint(path)
    torch.testing.assert_close(loaded.location.cell_precision_factor, model.location.cell_precision_factor)
    doc = torch.load(path, weights_only=True)
    doc["version"] = 1
    torch.save(doc, tmp_path / "old.pt")
    with pytest.raises(DataError, match="version 1 checkpoint.*retrain"):
        load_checkpoint(tmp_path / "old.pt")
