"""``tvmcompress tune model.onnx --target host --seconds 600 [--trials N] [--db DIR]``"""

from __future__ import annotations

import argparse

from tvmcompress.cli._common import add_model_arguments, compile_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.set_defaults(db=None)
    for action in parser._actions:  # the shared --db reads; here it is where records go
        if action.dest == "db":
            action.help = ("the tuning database to write (default: the per-user one, "
                           "~/.cache/tvmcompress/tuning)")
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="wall-time budget for tuning, in seconds (default 600)")
    parser.add_argument("--trials", type=int, default=None,
                        help="at most this many measured trials per kernel, counting those "
                             "already in the database (default: no cap)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="tune only the K kernels with the most FLOPs")


def run(args: argparse.Namespace) -> int:
    import tvmcompress as tc

    tune = tc.Tune(seconds=args.seconds, trials=args.trials, database=args.db,
                   top_k=args.top_k)
    print(f"tuning for at most {tune.seconds:.0f} s into {tune.directory}")
    compiled = compile_from_args(args, tune=tune)
    info = compiled.build_info
    print(f"{len(info.from_database)} of {info.kernels} kernels scheduled from the database, "
          f"the others by the default rules; database: {tune.directory}")
    return 0
