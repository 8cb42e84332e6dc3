"""``tvmcompress compile model.onnx --target raspberry-pi-4 -o out/``"""

from __future__ import annotations

import argparse

from tvmcompress.cli._common import add_model_arguments, compile_from_args, step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="directory to write model.so and manifest.json to (replaced "
                             "atomically if it holds an earlier export)")
    parser.add_argument("--report", action="store_true",
                        help="print the report (params, MACs, latency, fidelity) afterwards")


def run(args: argparse.Namespace) -> int:
    compiled = compile_from_args(args)
    with step(f"Exporting to {args.output}"):
        directory = compiled.export(args.output)
    print(f"wrote {directory}/model.so and {directory}/manifest.json")
    if args.report:
        print(compiled.report())
    elif compiled.build_info.unscheduled:
        print(f"warning: {len(compiled.build_info.unscheduled)} of {compiled.build_info.kernels} "
              "kernels have no schedule; see --report")
    return 0
