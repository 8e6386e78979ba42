"""The one entry point: ``edge-inspector <command> ...``.

Each command is one module of this package (``cli/<command>.py``) that exposes ``add_arguments(parser)`` and
``main(args) -> int``: a thin shell that parses arguments and calls the workflow function that does the work.
Only the chosen command's module is imported, so ``edge-inspector --camera 0`` never loads torch and ``train``
never loads tensorrt. Command modules import heavy libraries inside ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge_inspector import __version__
from edge_inspector.errors import EdgeInspectorError
from edge_inspector.log import setup_logging

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge_inspector.cli.run", "run the line: capture -> inference -> decision -> MQTT"),
    "demo": ("edge_inspector.cli.demo", "run the built-in demo line with the bundled demo model"),
    "train": ("edge_inspector.cli.train", "train HaloAE on good images into a model bundle"),
    "eval": ("edge_inspector.cli.eval", "evaluate a bundle or checkpoint on an MVTec-layout folder"),
    "export": ("edge_inspector.cli.export", "export a training checkpoint to a model bundle (ONNX + manifest)"),
    "calibrate": ("edge_inspector.cli.calibrate", "HQS: per-layer INT8/INT4 calibration + fine-tune"),
    "build-engine": ("edge_inspector.cli.build_engine", "build a TensorRT plan for this GPU from a bundle"),
    "bench": ("edge_inspector.cli.bench", "benchmark the engines and the whole loop"),
    "config": ("edge_inspector.cli.config", "print or check a line configuration"),
}
DEFAULT_COMMAND = "run"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"edge-inspector {__version__}", "", "usage: edge-inspector <command> [options]", ""]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Without a command, 'run' is assumed: edge-inspector --camera 0",
              "Help for one command: edge-inspector <command> --help"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv and argv[0] == "--version":
        print(__version__)
        return 0
    command = argv[0] if argv and argv[0] in COMMANDS else DEFAULT_COMMAND
    if argv and argv[0] == command:
        argv = argv[1:]
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"edge-inspector {command}", description=help_)
    _add_common(parser)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    level = "DEBUG" if args.verbose >= 2 else "INFO" if args.verbose == 1 else None
    setup_logging(level or "WARNING", args.log_json)
    try:
        return int(module.main(args) or 0)
    except EdgeInspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
