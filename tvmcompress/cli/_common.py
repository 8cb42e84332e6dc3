"""Arguments and helpers shared by subcommands: model loading flags, inputs, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from tvmcompress.cli.compress_flags import add_compress_arguments, compress_config
from tvmcompress.errors import ConfigError, InputError


def add_model_arguments(parser: argparse.ArgumentParser,
                        model_help: str = "the .onnx model file") -> None:
    parser.add_argument("model", help=model_help)
    parser.add_argument("--target", default="host",
                        help="target preset (see `tvmcompress targets`) or a JSON target dict; "
                             "default: host")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                        help="static shape of an input with dynamic dimensions; repeatable")
    parser.add_argument("--db", metavar="DIR",
                        help="a tuning database to use (read-only here; `tvmcompress tune` "
                             "writes one), besides the shipped and per-user ones")
    add_compress_arguments(parser)


def parse_input_shapes(specs: list[str]) -> dict[str, list[int]]:
    """``["x:1,3,224,224"]`` -> ``{"x": [1, 3, 224, 224]}``; the name may contain colons."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = [int(d) for d in dims.split(",")] if sep and name else None
        except ValueError:
            shape = None
        if not shape:
            raise ConfigError(f"--input-shape {spec!r} is not NAME:D1,D2,... "
                              "(e.g. --input-shape input:1,3,224,224)")
        shapes[name] = shape
    return shapes


def parse_target(text: str):
    """A preset name, or a JSON object for a raw TVM target dict."""
    if text.lstrip().startswith("{"):
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--target looks like JSON but does not parse: {err}") from err
    return text


def load_inputs(path: str | None, signature) -> dict:
    """Inputs from an .npz keyed by input name, or seeded random ones when ``path`` is None."""
    from tvmcompress.runtime import random_inputs

    if path is None:
        return random_inputs(signature)
    if not Path(path).is_file():
        raise InputError(f"Input file {path!r} does not exist")
    import numpy as np

    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise InputError(f"{path} is not a readable .npz file: {err}") from err


def compile_from_args(args: argparse.Namespace, tune=None):
    """Load and compile ``args.model`` for ``args.target`` (tuning first with ``tune``),
    showing each step."""
    import tvmcompress as tc

    shapes = parse_input_shapes(args.input_shape)
    target = tc.resolve_target(parse_target(args.target))
    config = compress_config(args)
    passes = ", ".join(type(p).__name__ for p in config.passes) or "none"
    print(f"model {args.model}, target {target.name}, input shapes {shapes or 'from the model'}, "
          f"passes: {passes}", file=sys.stderr)
    with step(f"Loading {args.model} (check, fix shapes, fold, import)"):
        model = tc.load(args.model, input_shapes=shapes)
    with step(f"Compressing and compiling for {target.name}"):
        return tc.compile(model, target, config=config, tune=tune, database=args.db)


@contextlib.contextmanager
def step(what: str):
    """Print a step's start, and its duration when it ends."""
    print(f"{what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
