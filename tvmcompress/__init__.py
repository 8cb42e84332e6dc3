"""tvmcompress: a model-compression compiler on Apache TVM."""

# threads: sets TVM_NUM_THREADS to the physical cores at import, before TVM's pool starts
from tvmcompress import runtime, threads  # noqa: F401
from tvmcompress.api import CompiledModel, compile
from tvmcompress.config import CompressConfig, PassConfig, register_pass
from tvmcompress.errors import (
    ConfigError,
    ExportError,
    InputError,
    TargetError,
    TvmCompressError,
    UnsupportedModelError,
)
from tvmcompress.frontend import Model, TensorSpec, load
from tvmcompress.passes.calibrate import quantization_fidelity
from tvmcompress.passes.fold_qdq import FoldQDQConfig
from tvmcompress.passes.lowrank import LowRankConfig
from tvmcompress.passes.prune_structured import PruneConfig
from tvmcompress.passes.quantize import QuantizeConfig
from tvmcompress.passes.sensitivity import ratio_schedule, sensitivity
from tvmcompress.passes.sparsify import SparsifyConfig
from tvmcompress.report import Report
from tvmcompress.schedules.tune import Tune
from tvmcompress.targets import TargetPreset, list_presets, resolve_target

__version__ = "0.1.0"

__all__ = [
    "CompiledModel",
    "CompressConfig",
    "ConfigError",
    "ExportError",
    "FoldQDQConfig",
    "InputError",
    "LowRankConfig",
    "Model",
    "PassConfig",
    "PruneConfig",
    "QuantizeConfig",
    "Report",
    "SparsifyConfig",
    "TargetError",
    "TargetPreset",
    "TensorSpec",
    "Tune",
    "TvmCompressError",
    "UnsupportedModelError",
    "compile",
    "list_presets",
    "load",
    "quantization_fidelity",
    "ratio_schedule",
    "register_pass",
    "resolve_target",
    "runtime",
    "sensitivity",
]
