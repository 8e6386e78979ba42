"""The run-time half must never import torch: an edge image should not have to carry it."""

import json
import subprocess
import sys

RUNTIME_PACKAGES = ["bundle", "engines", "capture", "pipeline", "publish", "ops"]
RUNTIME_MODULES = ["config", "errors", "log", "preprocess", "results", "cli"]

_PROBE = """
import importlib, json, pkgutil, sys
modules, packages = json.loads(sys.argv[1])
names = ["edge_inspector." + m for m in modules]
for package in packages:
    pkg = importlib.import_module("edge_inspector." + package)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in ("torch", "torchvision", "tensorrt", "pycuda") if m in sys.modules)
print(len(names), ",".join(heavy))
"""


def test_runtime_modules_do_not_import_torch():
    argument = json.dumps([RUNTIME_MODULES, RUNTIME_PACKAGES])
    run = subprocess.run([sys.executable, "-c", _PROBE, argument], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    count, heavy = int(out[0]), (out[1] if len(out) > 1 else "")
    assert count >= len(RUNTIME_MODULES)
    assert heavy == "", f"run-time modules pulled in {heavy}"


def test_run_command_parser_does_not_import_torch():
    code = (
        "import sys\nfrom edge_inspector import cli\n"
        "try:\n    cli.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
