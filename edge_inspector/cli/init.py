"""``edge-inspector init``: write a commented ``line.yaml`` to start a real line from.

Every setting is written with its default and its description (the configuration's own field docs) as a comment.
What the flags give is filled in; a missing ``source`` or ``model`` stays null, and ``run`` says so until it is set,
so an unedited file never runs the demo. Logging is set to INFO (the engine choice, connections, reopens are worth
keeping in a line's journal) and the web dashboard to port 8080.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_inspector.errors import ConfigError

HEADER = """\
# edge-inspector line configuration, written by 'edge-inspector init'.
# Check it:  edge-inspector config --config {path}
# Check the machine against it (camera, broker, model, disk):  edge-inspector doctor --config {path}
# Run it:  edge-inspector run --config {path}
# Any key can also be given on the command line as section.key=value (it wins over this file).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="line.yaml", help="file to write (default: line.yaml; '-' = print)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--camera", type=int, metavar="N", help="camera index for OpenCV (0 = first camera)")
    where.add_argument("--source", help="video file, rtsp:// URL or image folder")
    parser.add_argument("--model", help="model bundle folder")
    parser.add_argument("--station", help="station name used in topics and part ids")
    parser.add_argument("--mqtt", metavar="URL", help="MQTT broker, e.g. mqtts://broker:8883")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.config import RunConfig, commented_yaml, load_model

    values: dict = {"logging": {"level": "INFO"}, "http": {"port": 8080}}
    if args.camera is not None or args.source:
        values["source"] = str(args.camera) if args.camera is not None else args.source
    for key in ("model", "station"):
        if getattr(args, key):
            values[key] = getattr(args, key)
    if args.mqtt:
        values["mqtt"] = {"url": args.mqtt}
    config = load_model(RunConfig, values, "edge-inspector init flags")
    out = Path(args.out)
    text = HEADER.format(path=args.out) + commented_yaml(config)
    if args.out == "-":
        print(text, end="")
        return 0
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it or --out another file")
    out.write_text(text)
    missing = [key for key in ("source", "model") if getattr(config, key) is None]
    todo = f"; set {' and '.join(missing)} in it before 'run'" if missing else ""
    print(f"wrote {out}{todo}")
    return 0
