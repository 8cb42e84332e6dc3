"""``tvmcompress run out/ --inputs x.npz --outputs y.npz``"""

from __future__ import annotations

import argparse

import numpy as np

from tvmcompress.cli._common import load_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="DIR", help="an exported module directory")
    parser.add_argument("--inputs", metavar="FILE.npz",
                        help="inputs keyed by input name; default: seeded random inputs")
    parser.add_argument("--outputs", metavar="FILE.npz", help="save the outputs here")


def run(args: argparse.Namespace) -> int:
    from tvmcompress import runtime

    module = runtime.load(args.module)
    outputs = module.run(load_inputs(args.inputs, module.signature))
    for name, value in outputs.items():
        head = np.array2string(value.ravel()[:6], precision=5, separator=", ")
        print(f"{name}: {value.dtype}{list(value.shape)} first values {head}")
    if args.outputs:
        np.savez(args.outputs, **outputs)
        print(f"wrote {args.outputs}")
    return 0
