"""The ``tvmcompress`` command line: compile, run, bench, profile, report, tune, targets."""

from __future__ import annotations

import argparse
import importlib
import sys

from tvmcompress.errors import TvmCompressError

SUBCOMMANDS = {
    "compile": "Compile a model for a target and export it (library + manifest.json).",
    "run": "Run an exported module on inputs from an .npz file (or random inputs).",
    "bench": "Measure the latency of an exported module or of a model compiled for this host.",
    "profile": "Time each kernel of a model: share of a run, calls, GFLOP/s, unscheduled ones.",
    "report": "Compile a model and print params, weight bytes, MACs, latency and fidelity.",
    "tune": "Tune a model's kernels with MetaSchedule for a time budget into a database.",
    "targets": "List the target presets.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvmcompress",
        description="Model-compression compiler on Apache TVM: ONNX in, small fast library out.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"tvmcompress.cli.{name}_cmd")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    module = importlib.import_module(f"tvmcompress.cli.{args.command}_cmd")
    try:
        return module.run(args) or 0
    except TvmCompressError as err:
        print(f"tvmcompress {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tvmcompress {args.command}: interrupted", file=sys.stderr)
        return 130
