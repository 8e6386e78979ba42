"""``edge-inspector config``: print the defaults or check a line configuration file."""

from __future__ import annotations

import argparse

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file to check (prints the merged result)")
    parser.add_argument("--defaults", action="store_true", help="print every setting with its default and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. mqtt.url=mqtt://h:1883")


def main(args: argparse.Namespace) -> int:
    from edge_inspector.config import dump_defaults, load_run_config

    if args.defaults:
        print(dump_defaults(), end="")
        return 0
    config = load_run_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0
