"""Install paths per platform: pinned TensorRT extras for desktops, JetPack's TensorRT on a Jetson, hints that match.

``deploy/install.sh`` runs here with DRY_RUN=1 (it prints the commands it would run) and a made-up
``/etc/nv_tegra_release``; the real install is what CI runs (``deploy/install.sh dev``).
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from edge_inspector import errors
from edge_inspector.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[2]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_tensorrt_extras_pin_the_cuda_and_tensorrt_majors():
    extras = _extras()
    assert "tensorrt" not in extras, "the unpinned extra resolves to TensorRT 11 for CUDA 13 on any machine"
    assert extras["tensorrt-cu12"] == ["tensorrt-cu12>=10,<12", "pycuda>=2025.1.2"]
    assert extras["tensorrt-cu13"] == ["tensorrt-cu13>=10,<12", "pycuda>=2025.1.2"]
    assert extras["pycuda"] == ["pycuda>=2025.1.2"]  # Jetson / NGC containers: the system's TensorRT


def _dry_run(tmp_path, profile: str, jetson: bool) -> str:
    release = tmp_path / "nv_tegra_release"
    if jetson:
        release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    env = {**os.environ, "DRY_RUN": "1", "EDGE_INSPECTOR_TEGRA_RELEASE": str(release)}
    done = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), profile], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout


@pytest.mark.parametrize("profile", ["runtime", "dev"])
def test_on_a_jetson_the_venv_sees_jetpack_and_tensorrt_never_comes_from_pip(tmp_path, profile):
    out = _dry_run(tmp_path, profile, jetson=True)
    assert "Jetson detected (# R36 (release), REVISION: 4.0" in out
    assert "+ python3 -m venv --system-site-packages .venv" in out
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert not any("tensorrt" in line for line in installs), installs
    assert installs[-1].endswith(".[pycuda,train,dev]" if profile == "dev" else ".[pycuda]")


def test_elsewhere_the_install_is_unchanged(tmp_path):
    out = _dry_run(tmp_path, "dev", jetson=False)
    assert "system-site-packages" not in out and "Jetson" not in out
    assert out.splitlines()[-2] == "+ .venv/bin/python -m pip install -q -e .[train,dev]"


def test_the_missing_tensorrt_hint_fits_the_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(errors, "JETSON_RELEASE_FILE", tmp_path / "absent")
    desktop = str(MissingDependencyError.for_gpu("tensorrt"))
    assert "edge-inspector[tensorrt-cu12]" in desktop and "edge-inspector[tensorrt-cu13]" in desktop
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36")
    monkeypatch.setattr(errors, "JETSON_RELEASE_FILE", release)
    jetson = str(MissingDependencyError.for_gpu("tensorrt"))
    assert "never from pip" in jetson and "python3-libnvinfer" in jetson and "system-site-packages" in jetson
    assert "pip install 'edge-inspector[tensorrt" not in jetson
    assert "edge-inspector[pycuda]" in str(MissingDependencyError.for_gpu("pycuda"))
