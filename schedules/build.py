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
from typing import Any

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import dlight as dl
from tvm.s_tir.meta_schedule.database import Database

from tvmcompress.schedules.cpu import Conv2d, Elementwise, Matmul
from tvmcompress.schedules.cpu.int4_matmul import Int4Matmul
from tvmcompress.schedules.cpu.int8_gemm import Int8Gemm
from tvmcompress.schedules.cpu.int8_pack import int8_pack
from tvmcompress.schedules.cpu.nchwc import block_width, to_nchwc
from tvmcompress.schedules.cpu.pack_weights import pack_weights
from tvmcompress.schedules.cpu.reduction import RowReduction
from tvmcompress.schedules.cpu.winograd import Winograd
from tvmcompress.schedules.guard import Guarded
from tvmcompress.schedules.records import apply_database
from tvmcompress.targets import TargetPreset

LAID_OUT = "tvmcompress.laid_out"
_INJECTIVE, _OPAQUE = 2, 8  # TVM's OpPatternKind values (kInjective, kOpaque)


@dataclass
class BuildInfo:
    """What the build did: time taken, which kernels got no schedule and which got theirs
    from a tuning database (the rest got the default rules)."""

    seconds: float = 0.0
    kernels: int = 0
    unscheduled: list[str] = field(default_factory=list)
    from_database: list[str] = field(default_factory=list)
    tuning: Any = None  # the TuneResult when this build was tuned first
    flops: dict[str, float] = field(default_factory=dict)  # per kernel call, TVM's estimate

    def kernel_facts(self) -> dict[str, Any]:
        """What a profile of the built module needs to know (kept in an export's manifest)."""
        return {"flops": dict(self.flops), "unscheduled": list(self.unscheduled),
                "tuned": list(self.from_database)}


def rules_for(target: tvm.target.Target) -> list[dl.ScheduleRule]:
    """Schedule rules for a target, most specific first."""
    if "gpu" in target.keys:
        return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                dl.gpu.Fallback()]
    return [Winograd(), Int8Gemm(), Int4Matmul(), Matmul(), Conv2d(), Elementwise(),
            RowReduction(), dl.cpu.GEMV(), dl.cpu.Reduction()]


def layout_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Relax-level layout changes our schedules rely on, run before legalization and fusion
    (no-ops for GPU targets). They run once: a module that went through them is marked, so a
    build of it (e.g. with the packed weights lifted into parameters) does not run them again."""
    inner = tvm.transform.Sequential([
        int8_pack(target, block=block_width(target)),  # blocked int8 convs: to_nchwc's
        to_nchwc(target), int8_pack(target), pack_weights(target)])

    @tvm.transform.module_pass(opt_level=0, name="TvmCompressLayout")
    def lay_out(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if mod.attrs is not None and mod.attrs.get(LAID_OUT):
            return mod
        out = inner(mod)
        return mod if tvm_ffi.structural_equal(out, mod) else out.with_attr(LAID_OUT, True)

    return [lay_out]


def _backend(target: tvm.target.Target):
    from tvm.relax.backend import cpu_generic, cuda, gpu_generic

    if target.kind.name == "cuda":
        return cuda.pipeline
    return gpu_generic.pipeline if "gpu" in target.keys else cpu_generic.pipeline


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Everything before scheduling: library dispatch, our layout changes, legalize, fuse.
    Tuning extracts its kernels after these, so workloads match the ones builds schedule."""
    backend = _backend(target)
    fuse = []
    for p in backend.legalize_passes(target):
        if not isinstance(p, dl.ApplyDefaultSchedule):
            fuse.append(p)
        if p.info.name == "AnnotateTIROpPattern":
            fuse.append(_layout_transforms_injective())
    return backend.library_dispatch_passes(target) + layout_passes(target) + fuse


def _layout_transforms_injective() -> tvm.transform.Pass:
    """TVM's pattern analysis calls a legalized ``layout_transform`` opaque (its index map
    divides), so FuseOps left each one a kernel of its own: an extra pass over the tensor
    between NCHWc and int8 NCHW kernels (a transform, then a pad/reshape/transpose). It is a
    pure re-indexing: injective, and now it fuses with its injective neighbours."""

    @tvm.transform.module_pass(opt_level=0, name="LayoutTransformsInjective")
    def mark(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        marked = {gv: func.with_attr("op_pattern", _INJECTIVE)
                  for gv, func in mod.functions_items()
                  if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
                  and gv.name_hint.startswith("te_layout_transform")
                  and func.attrs.get("op_pattern") == _OPAQUE}
        if not marked:
            return mod
        return tvm.IRModule({**dict(mod.functions_items()), **marked}, attrs=mod.attrs,
                            global_infos=mod.global_infos)

    return mark


def relax_pipeline(target: tvm.target.Target, info: BuildInfo,
                   database: Database | None = None) -> tvm.transform.Pass:
    """TVM's backend pipeline for the target: tuned records from ``database`` where it has
    them, our schedule rules for the other kernels, after fusion."""
    backend = _backend(target)

    @tvm.transform.module_pass(opt_level=0, name="RecordUnscheduled")
    def record(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        funcs = [(gv.name_hint, f) for gv, f in mod.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc)]
        info.kernels = len(funcs)
        info.unscheduled = sorted(n for n, f in funcs
                                  if not (f.attrs and f.attrs.get("tirx.is_scheduled")))
        info.flops = {n: flops for n, f in funcs if (flops := _estimate_flops(f))}
        return mod

    passes = [*fusion_passes(target), apply_database(database, target, info.from_database),
              dl.ApplyDefaultSchedule(*map(Guarded, rules_for(target))), record,
              *backend.dataflow_lower_passes(target), *backend.finalize_passes(target)]
    return tvm.transform.Sequential(passes, name="TvmCompressBuild")


def _estimate_flops(func: tvm.tirx.PrimFunc) -> float | None:
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # an estimate only: opaque calls have none
        return None


def build(mod: tvm.IRModule, preset: TargetPreset, database: Database | None = None
          ) -> tuple[relax.VMExecutable, BuildInfo]:
    """Compile ``mod`` for ``preset``, taking kernels' schedules from ``database`` where it
    has a record for them; returns the executable and what the build did."""
    target = preset.tvm_target
    info = BuildInfo()
    start = time.perf_counter()
    from tvmcompress import cuda

    is_cuda = target.kind.name == "cuda"  # device code (SASS) even without a GPU, checked here
    with cuda.device_codegen() if is_cuda else contextlib.nullcontext(), target:
        executable = tvm.compile(mod, target,
                                 relax_pipeline=relax_pipeline(target, info, database))
    if is_cuda:
        cuda.check_executable(executable, str(target.attrs["arch"]))
    info.seconds = time.perf_counter() - start
    return executable, info
