"""A bundle calibrated with full-range 8-bit weights is refused where ONNX Runtime's kernels would saturate them."""

from __future__ import annotations

import pytest

from edge_inspector.bundle.manifest import QuantizationSpec
from edge_inspector.bundle.store import load_bundle, save_manifest
from edge_inspector.engines import ort
from edge_inspector.errors import BundleError
from tests.fixtures.bundles import make_tiny_bundle


def _bundle(tmp_path, codes: int):
    bundle = make_tiny_bundle(tmp_path / f"b{codes}")
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.quantization = QuantizationSpec(precision="qdq", weight_codes=codes, weight_codes_reason="test")
    save_manifest(bundle.path, manifest)
    return load_bundle(bundle.path)


def test_full_range_weights_are_refused_on_an_x86_cpu_without_vnni(tmp_path, monkeypatch):
    monkeypatch.setattr(ort, "full_range_exact", lambda: False)
    with pytest.raises(BundleError, match="saturate.*--weight-range reduced"):
        ort.OrtEngine(_bundle(tmp_path, 127))
    ort.OrtEngine(_bundle(tmp_path, 63)).close()  # the reduced range runs anywhere


def test_full_range_weights_run_where_the_kernels_take_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ort, "full_range_exact", lambda: True)
    ort.OrtEngine(_bundle(tmp_path, 127)).close()
