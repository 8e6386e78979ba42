"""Model bundle folders: written, read back, and refused with a clear message when anything is off."""

import numpy as np
import pytest
import yaml

from edge_inspector.bundle import Manifest, load_bundle, write_bundle
from edge_inspector.bundle.manifest import GraphSpec, InputSpec, Thresholds
from edge_inspector.errors import BundleError


def _manifest() -> Manifest:
    return Manifest(
        model_id="test-model",
        created="2026-11-25T00:00:00Z",
        edge_inspector_version="0.1.0",
        graph=GraphSpec(sha256="to-be-filled", opset=17),
        input=InputSpec(width=64, height=32),
        thresholds=Thresholds(image=0.5, pixel=0.8),
    )


@pytest.fixture()
def bundle_dir(tmp_path):
    graph = tmp_path / "graph.bin"
    graph.write_bytes(b"not really onnx, the store only hashes it")
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 64, 3), dtype=np.uint8)
    write_bundle(tmp_path / "bundle", graph, _manifest(), calibration_images=images)
    return tmp_path / "bundle"


def test_round_trip(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.input.width == 64 and bundle.manifest.graph.sha256 != "to-be-filled"
    assert bundle.calibration_images().shape == (2, 32, 64, 3)


def test_replaced_graph_is_refused(bundle_dir):
    (bundle_dir / "model.onnx").write_bytes(b"something else")
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_bundle(bundle_dir)


def test_missing_pieces_are_named(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="Model bundle not found"):
        load_bundle(tmp_path / "nowhere")
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx named in the manifest is missing"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.yaml").unlink()
    with pytest.raises(BundleError, match="manifest.yaml is missing"):
        load_bundle(bundle_dir)


def test_corrupt_or_foreign_manifest(bundle_dir):
    path = bundle_dir / "manifest.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text("schema_version: [1\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_dir)
    path.write_text(yaml.safe_dump({**data, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99"):
        load_bundle(bundle_dir)
    data["input"]["widht"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="input.widht: unknown key. Did you mean 'width'"):
        load_bundle(bundle_dir)


def test_calibration_images_checked(bundle_dir):
    np.savez_compressed(bundle_dir / "calibration.npz", images=np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(BundleError, match="expected uint8"):
        load_bundle(bundle_dir).calibration_images()
    (bundle_dir / "calibration.npz").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(bundle_dir).calibration_images()


def test_save_manifest_replaces_thresholds_but_never_a_mismatched_graph(bundle_dir):
    from edge_inspector.bundle.store import save_manifest

    manifest = load_bundle(bundle_dir).manifest.model_copy(deep=True)
    manifest.thresholds.image = 0.75
    save_manifest(bundle_dir, manifest)
    assert load_bundle(bundle_dir).manifest.thresholds.image == 0.75
    manifest.graph.sha256 = "0" * 64
    with pytest.raises(BundleError, match="graph hash does not match"):
        save_manifest(bundle_dir, manifest)
    assert load_bundle(bundle_dir).manifest.thresholds.image == 0.75
