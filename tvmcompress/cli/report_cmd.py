"""``tvmcompress report model.onnx --target host``"""

from __future__ import annotations

import argparse
import json

from tvmcompress.cli._common import add_model_arguments, compile_from_args, step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--no-measure", action="store_true",
                        help="skip latency and fidelity measurement (static counts only)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    compiled = compile_from_args(args)
    with step("Measuring" if not args.no_measure else "Counting"):
        report = compiled.report(measure=not args.no_measure)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0
