"""``edge-inspector build-engine`` on a machine without TensorRT: a clear message naming the extra, nothing written."""

from __future__ import annotations

import pytest

from edge_inspector import cli
from edge_inspector.engines.trt_build import BuildOptions, build_engine
from edge_inspector.errors import ConfigError, MissingDependencyError
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.trt_graphs import trt_skip_reason

needs_no_tensorrt = pytest.mark.skipif(
    trt_skip_reason() != "TensorRT not installed", reason="TensorRT installed: its absence cannot be shown here"
)


@needs_no_tensorrt
def test_build_engine_without_tensorrt_names_the_extra(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "tiny", width=16, height=16)
    code = cli.main(["build-engine", "--model", str(bundle.path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "'tensorrt' is not installed." in err and "edge-inspector[tensorrt-cu12]" in err
    assert not bundle.plans_dir.exists()


@needs_no_tensorrt
def test_build_engine_api_raises_the_same(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny", width=16, height=16)
    with pytest.raises(MissingDependencyError):
        build_engine(bundle)


def test_bad_options_are_refused_before_anything_else(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny", width=16, height=16)
    with pytest.raises(ConfigError, match="--batch 0"):
        build_engine(bundle, BuildOptions(batch=0))
    with pytest.raises(ConfigError, match="at least 16 MiB"):
        build_engine(bundle, BuildOptions(workspace_mb=1))


def test_missing_bundle_is_a_bundle_error(tmp_path, capsys):
    assert cli.main(["build-engine", "--model", str(tmp_path / "nowhere")]) == 2
    assert "Model bundle not found" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["build-engine", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--workspace-mb", "--timing-cache", "--batch", "--out", "--skip-parity"):
        assert flag in out
