"""``tvmcompress bench out/`` or ``tvmcompress bench model.onnx --input-shape x:1,3,224,224``"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvmcompress.cli._common import compile_from_args, load_inputs, parse_input_shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported module directory, or an .onnx model to "
                                      "compile for --target first")
    parser.add_argument("--target", default="host", help="target preset for an .onnx model")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                        help="static shape of a dynamic input of an .onnx model; repeatable")
    parser.add_argument("--inputs", metavar="FILE.npz", help="inputs; default: random")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")


def run(args: argparse.Namespace) -> int:
    from tvmcompress import runtime

    if Path(args.model).is_dir():
        if args.input_shape:
            parse_input_shapes(args.input_shape)  # still reject malformed flags
        module = runtime.load(args.model)
    else:
        module = compile_from_args(args)
    inputs = load_inputs(args.inputs, module.signature)
    print(module.benchmark(inputs, warmup=args.warmup, repeat=args.repeat))
    return 0
