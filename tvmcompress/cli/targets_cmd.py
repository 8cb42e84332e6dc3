"""``tvmcompress targets``: the presets, what they generate code for, whether they run here."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the presets as JSON")


def run(args: argparse.Namespace) -> int:
    from tvmcompress.targets import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps([p.to_dict() for p in presets], indent=2))
        return 0
    print(f"{'name':<16}{'kind':<6}{'arch':<9}{'runs here':<11}description")
    for p in presets:
        here = "yes" if not p.why_not_runnable_here() else "no"
        print(f"{p.name:<16}{p.target['kind']:<6}{p.arch:<9}{here:<11}{p.description}")
    return 0
