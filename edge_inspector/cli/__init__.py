"""The one entry point: ``edge-inspector <command> ...``.

Each command is one module of this package (``cli/<command>.py``) that exposes ``add_arguments(parser)`` and
``main(args) -> int``: a thin shell that parses arguments and calls the workflow function that does the work.
Only the chosen command's module is imported, so ``edge-inspector --camera 0`` never loads torch and ``train``
never loads tensorrt. Command modules import heavy libraries inside ``main``.

Exit codes (the README lists them too):
    0    done
    1    the work failed at run time (a line stage crashed, a check of ``doctor`` failed, the demo ended early)
    2    usage or configuration error (unknown command or flag, bad setting, missing file): nothing ran
    3    a misconfigured run: every judged part got the fail-safe verdict (e.g. an ROI outside the frame)
    130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM: both after an orderly stop (queued parts judged, summary)
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge_inspector import __version__
from edge_inspector.config import did_you_mean
from edge_inspector.errors import EdgeInspectorError
from edge_inspector.log import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ALL_FAIL_SAFE = 0, 1, 2, 3

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge_inspector.cli.run", "run the line: capture -> inference -> decision -> MQTT"),
    "demo": ("edge_inspector.cli.demo", "run the built-in demo line with the bundled demo model"),
    "init": ("edge_inspector.cli.init", "write a commented line.yaml to start a real line from"),
    "doctor": ("edge_inspector.cli.doctor", "check camera, broker, model, TensorRT plan and disk before a run"),
    "train": ("edge_inspector.cli.train", "train HaloAE on good images into a model bundle"),
    "eval": ("edge_inspector.cli.eval", "evaluate a bundle or checkpoint on an MVTec-layout folder"),
    "export": ("edge_inspector.cli.export", "export a training checkpoint to a model bundle (ONNX + manifest)"),
    "calibrate": ("edge_inspector.cli.calibrate", "HQS: per-layer INT8/INT4 calibration + fine-tune"),
    "build-engine": ("edge_inspector.cli.build_engine", "build a TensorRT plan for this GPU from a bundle"),
    "bench": ("edge_inspector.cli.bench", "benchmark the engines and the whole loop"),
    "config": ("edge_inspector.cli.config", "print or check a line configuration"),
}
DEFAULT_COMMAND = "run"
HELP_WORDS, VERSION_WORDS = ("help", "-h", "--help"), ("version", "--version")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"edge-inspector {__version__}", "", "usage: edge-inspector <command> [options]", ""]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Without a command, 'run' is assumed: edge-inspector --camera 0 --model <bundle>",
              "Help for one command: edge-inspector help <command>  (or: edge-inspector <command> --help)",
              "Exit codes: 0 done, 1 failed, 2 usage/config error, 3 every part fail-safe, 130/143 SIGINT/SIGTERM"]
    return "\n".join(lines)


def log_settings(args: argparse.Namespace, level: str = "WARNING", as_json: bool = False) -> None:
    """Configure logging: -v/-vv and --log-json win over ``level``/``as_json`` (a config's ``logging.*``)."""
    if args.verbose:
        level = "DEBUG" if args.verbose >= 2 else "INFO"
    setup_logging(level, as_json or args.log_json)


def _command_for(argv: list[str]) -> tuple[str, list[str]] | int:
    """(command, its arguments), or an exit code when ``argv`` was help, version or an unknown command."""
    first = argv[0] if argv else None
    if first in HELP_WORDS:
        if first == "help" and len(argv) > 1 and argv[1] in COMMANDS:
            return argv[1], ["--help"]
        print(_top_help())
        return EXIT_OK
    if first in VERSION_WORDS:
        print(__version__)
        return EXIT_OK
    if first in COMMANDS:
        return first, argv[1:]
    if first is not None and not first.startswith("-") and "=" not in first:
        # A word that is neither a command, a flag nor key=value: a mistyped command, not an override.
        hint = did_you_mean(first, [*COMMANDS, "help", "version"])
        print(f"error: unknown command '{first}'.{hint}\n\n{_top_help()}", file=sys.stderr)
        return EXIT_USAGE
    return DEFAULT_COMMAND, argv


def main(argv: list[str] | None = None) -> int:
    chosen = _command_for(list(sys.argv[1:] if argv is None else argv))
    if isinstance(chosen, int):
        return chosen
    command, argv = chosen
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"edge-inspector {command}", description=help_)
    _add_common(parser)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    log_settings(args)  # commands that read a line configuration apply its logging.* settings themselves
    try:
        return int(module.main(args) or 0)
    except EdgeInspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
