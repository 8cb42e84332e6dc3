"""Relax -> Relax compression passes, one per file, each registered with its config.

Importing this package imports every pass module, so each registers its config type.
"""

import importlib
import pkgutil

from tvmcompress.passes.pipeline import run_passes
from tvmcompress.passes.record import record

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("pipeline", "record"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["record", "run_passes"]
