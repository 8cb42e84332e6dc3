"""Target presets as data: one JSON file per board, ISA or GPU under ``presets/``."""

from tvmcompress.targets.presets import TargetPreset, list_presets, resolve_target

__all__ = ["TargetPreset", "list_presets", "resolve_target"]
