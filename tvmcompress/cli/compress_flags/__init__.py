"""CLI flags of the compression passes: one module per pass family.

Each module here defines ``ORDER`` (its place in the pipeline the CLI builds: prune, low-rank,
sparsity, quantize), ``add_arguments(group)`` and ``configs(args) -> list[PassConfig]``
(empty when its flags are not given). compile, report and bench share them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType


def _modules() -> list[ModuleType]:
    found = [importlib.import_module(f"{__name__}.{m.name}")
             for m in pkgutil.iter_modules(__path__)]
    return sorted(found, key=lambda m: m.ORDER)


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compression (passes run in the order listed here)")
    for module in _modules():
        module.add_arguments(group)


def compress_config(args: argparse.Namespace):
    """The CompressConfig the flags describe."""
    from tvmcompress.config import CompressConfig

    return CompressConfig(passes=[c for m in _modules() for c in m.configs(args)])
