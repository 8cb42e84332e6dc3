"""Lower, schedule and build a Relax module for a target preset.

Before fusion, CPU targets get constant weights pre-packed for our kernels
(``schedules/cpu/pack_weights.py``). After fusion each TIR function gets the first schedule
that applies: our CPU rules (``schedules/cpu/``: blocked GEMM, direct conv/pool, injective),
then dlight's defaults; functions no rule scheduled are listed in ``BuildInfo`` so the report
can warn about them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from tvmcompress.schedules.cpu import Conv2d, Elementwise, Matmul
from tvmcompress.schedules.cpu.pack_weights import pack_weights
from tvmcompress.schedules.guard import Guarded
from tvmcompress.targets import TargetPreset


@dataclass
class BuildInfo:
    """What the build did: time taken and which kernels got no schedule."""

    seconds: float = 0.0
    kernels: int = 0
    unscheduled: list[str] = field(default_factory=list)


def rules_for(target: tvm.target.Target) -> list[dl.ScheduleRule]:
    """Schedule rules for a target, most specific first."""
    if "gpu" in target.keys:
        return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                dl.gpu.Fallback()]
    return [Matmul(), Conv2d(), Elementwise(), dl.cpu.GEMV(), dl.cpu.Reduction()]


def layout_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Relax-level layout changes our schedules rely on, run before legalization and fusion
    (no-ops for GPU targets)."""
    return [pack_weights(target)]


def _backend(target: tvm.target.Target):
    from tvm.relax.backend import cpu_generic, cuda, gpu_generic

    if target.kind.name == "cuda":
        return cuda.pipeline
    return gpu_generic.pipeline if "gpu" in target.keys else cpu_generic.pipeline


def relax_pipeline(target: tvm.target.Target, info: BuildInfo) -> tvm.transform.Pass:
    """TVM's backend pipeline for the target, with our schedule rules after fusion."""
    backend = _backend(target)
    fuse = [p for p in backend.legalize_passes(target)
            if not isinstance(p, dl.ApplyDefaultSchedule)]

    @tvm.transform.module_pass(opt_level=0, name="RecordUnscheduled")
    def record(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        funcs = [(gv.name_hint, f) for gv, f in mod.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc)]
        info.kernels = len(funcs)
        info.unscheduled = sorted(n for n, f in funcs
                                  if not (f.attrs and f.attrs.get("tirx.is_scheduled")))
        return mod

    passes = (backend.library_dispatch_passes(target) + layout_passes(target) + fuse
              + [dl.ApplyDefaultSchedule(*map(Guarded, rules_for(target))), record]
              + backend.dataflow_lower_passes(target) + backend.finalize_passes(target))
    return tvm.transform.Sequential(passes, name="TvmCompressBuild")


def build(mod: tvm.IRModule, preset: TargetPreset) -> tuple[relax.VMExecutable, BuildInfo]:
    """Compile ``mod`` for ``preset``; returns the executable and what the build did."""
    target = preset.tvm_target
    info = BuildInfo()
    start = time.perf_counter()
    from tvmcompress import cuda

    is_cuda = target.kind.name == "cuda"  # device code (SASS) even without a GPU, checked here
    with cuda.device_codegen() if is_cuda else contextlib.nullcontext(), target:
        executable = tvm.compile(mod, target, relax_pipeline=relax_pipeline(target, info))
    if is_cuda:
        cuda.check_executable(executable, str(target.attrs["arch"]))
    info.seconds = time.perf_counter() - start
    return executable, info
