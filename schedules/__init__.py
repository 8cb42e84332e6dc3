"""Schedules: turn the compressed Relax module into scheduled TIR and a built library."""

from tvmcompress.schedules.build import BuildInfo, build

__all__ = ["BuildInfo", "build"]
