"""Relax -> Relax compression passes, one per file, each registered with its config."""

from tvmcompress.passes.pipeline import run_passes

__all__ = ["run_passes"]
