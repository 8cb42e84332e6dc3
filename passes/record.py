"""What passes did, for the report: ``record(...)`` adds a row to the running pipeline's log.

A pass calls ``record("LowRankSplit", layer="matmul_3", rank=64, split=True)`` for each
decision it makes (including what it skipped and why); ``run_passes`` collects the rows and the
report prints them per pass. Outside a pipeline, ``record`` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_LOG: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "tvmcompress_pass_log", default=None)


def record(pass_name: str, **fields: Any) -> None:
    """Add one row (e.g. one layer's decision) to the current pipeline's log."""
    log = _LOG.get()
    if log is not None:
        log.append({"pass": pass_name, **fields})


@contextlib.contextmanager
def collecting() -> Iterator[list[dict[str, Any]]]:
    """Collect the rows recorded inside the ``with`` block into the yielded list."""
    rows: list[dict[str, Any]] = []
    token = _LOG.set(rows)
    try:
        yield rows
    finally:
        _LOG.reset(token)
