"""``tvmcompress compile model.onnx --target raspberry-pi-4 -o out/``"""

from __future__ import annotations

import argparse

from tvmcompress.cli._common import add_model_arguments, compile_from_args, step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="directory to write the deploy bundle to: model.so, manifest.json, "
                             "lib/, include/, a C++ example and README.md (replaced atomically "
                             "if it holds an earlier export)")
    parser.add_argument("--separate-weights", action="store_true",
                        help="keep the weights in weights.params beside model.so instead of "
                             "embedding them (the Python and C++ runtimes load it)")
    parser.add_argument("--report", action="store_true",
                        help="print the report (params, MACs, latency, fidelity) afterwards")


def run(args: argparse.Namespace) -> int:
    compiled = compile_from_args(args)
    with step(f"Exporting to {args.output}"):
        directory = compiled.export(args.output, separate_weights=args.separate_weights)
    extra = " (+ weights.params)" if args.separate_weights else ""
    print(f"wrote {directory}/model.so{extra} and {directory}/manifest.json, with the runtime "
          f"libraries and a C++ example for {compiled.preset.arch} (see {directory}/README.md)")
    if args.report:
        print(compiled.report())
    elif compiled.build_info.unscheduled:
        print(f"warning: {len(compiled.build_info.unscheduled)} of {compiled.build_info.kernels} "
              "kernels have no schedule; see --report")
    return 0
