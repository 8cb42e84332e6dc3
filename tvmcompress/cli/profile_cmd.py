"""``tvmcompress profile out/`` or ``tvmcompress profile model.onnx [compression flags]``:
each kernel's share of a run, so the user sees what to tune and what has no schedule."""

from __future__ import annotations

import argparse

from tvmcompress.cli._common import load_inputs
from tvmcompress.cli.bench_cmd import module_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvmcompress.cli._common import add_model_arguments

    add_model_arguments(parser, "an exported module directory, or an .onnx model to compile "
                                "for --target (with the compression flags) first")
    parser.add_argument("--inputs", metavar="FILE.npz", help="inputs; default: random")
    parser.add_argument("--rounds", type=int, default=5, help="profiled runs (default 5)")
    parser.add_argument("--top", type=int, default=25,
                        help="kernels listed, the slowest first (default 25; 0: all)")


def run(args: argparse.Namespace) -> int:
    from tvmcompress.errors import ConfigError

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0 (0: all kernels), got {args.top}")
    module = module_from_args(args)
    result = module.profile(load_inputs(args.inputs, module.signature), rounds=args.rounds)
    print(result.table(top=args.top or None))
    return 0
