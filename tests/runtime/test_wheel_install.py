"""A built wheel runs the demo from an empty folder (issue 16, item 5): the demo model is package data, and the
line's state (spool, archive) goes to the state directory, never into the current folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_built_wheel_runs_the_demo_from_an_empty_folder(tmp_path):
    source, dist, target, empty, state = (tmp_path / name for name in ("src", "dist", "site", "empty", "state"))
    empty.mkdir()
    # Built from a copy: setuptools builds in the source tree's build/ folder, which a test must not touch.
    shutil.copytree(REPO / "edge_inspector", source / "edge_inspector", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The run-time dependencies are already in this environment; only the package itself comes from the wheel.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)], check=True,
                   cwd=tmp_path, capture_output=True)
    wheel = next(dist.glob("edge_inspector-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_STATE_HOME": str(state)}
    where = subprocess.run([sys.executable, "-c", "import edge_inspector; print(edge_inspector.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))  # the wheel's copy, not the source tree
    demo = subprocess.run([sys.executable, "-m", "edge_inspector", "demo", "--parts", "3", "--interval", "0",
                           "--mqtt", "mqtt://127.0.0.1:1"], cwd=empty, env=env, capture_output=True, text=True,
                          timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "summary:" in demo.stdout and str(target) in demo.stdout  # the model from the installed package
    assert list(empty.iterdir()) == []  # nothing written where it was started
