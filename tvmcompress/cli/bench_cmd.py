"""``tvmcompress bench out/`` or ``tvmcompress bench model.onnx --input-shape x:1,3,224,224``"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvmcompress.cli._common import (
    add_model_arguments,
    compile_from_args,
    load_inputs,
    parse_input_shapes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "an exported module directory, or an .onnx model to compile "
                                "for --target (with the compression flags) first")
    parser.add_argument("--inputs", metavar="FILE.npz", help="inputs; default: random")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")


def module_from_args(args: argparse.Namespace):
    """An exported module directory loaded, or an .onnx model compiled from the flags."""
    from tvmcompress import runtime

    if Path(args.model).is_dir():
        if args.input_shape:
            parse_input_shapes(args.input_shape)  # still reject malformed flags
        return runtime.load(args.model)
    return compile_from_args(args)


def run(args: argparse.Namespace) -> int:
    module = module_from_args(args)
    inputs = load_inputs(args.inputs, module.signature)
    print(module.benchmark(inputs, warmup=args.warmup, repeat=args.repeat))
    return 0
