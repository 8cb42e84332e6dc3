"""Which tuning record a kernel gets: canonical workloads, target compatibility, replay.

Records are keyed by a canonical workload (the fused PrimFunc renamed ``main``, so the same
kernel in two models matches) and carry the target they were measured on. A compile applies
the fastest record whose target is compatible with its own; other kernels keep going to the
default rules.
"""

from __future__ import annotations

import logging
import statistics

import tvm
from tvm.s_tir import meta_schedule as ms

logger = logging.getLogger(__name__)


def canonical(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """The workload of a kernel: named ``main`` so equal kernels of different models match."""
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.IRModule({"main": func})


def _features(target: tvm.target.Target) -> frozenset[str]:
    from tvmcompress.targets.presets import _cpu_features

    attrs = {k: target.attrs[k] for k in ("mtriple", "mcpu", "mattr") if k in target.attrs}
    if "mattr" in attrs:
        attrs["mattr"] = [str(a) for a in attrs["mattr"]]
    return frozenset(_cpu_features({"kind": "llvm", **{k: (v if k == "mattr" else str(v))
                                                       for k, v in attrs.items()}}))


_COMPATIBLE: dict[tuple[str, str], bool] = {}


def compatible(record_target: tvm.target.Target, target: tvm.target.Target) -> bool:
    """Can a record measured on ``record_target`` be used when compiling for ``target``?

    Same kind; for CPUs the same architecture, no ISA feature the target lacks, and the same
    vector width (AVX-512 or not): a schedule is only loop structure, so it is sound on any
    such CPU, and its tile sizes were measured with the same vector lanes. ``num-cores``
    and the CPU name do not matter (host ``znver3`` uses records tuned for ``x86-64-v3``).
    """
    key = (str(record_target), str(target))
    if key not in _COMPATIBLE:
        _COMPATIBLE[key] = _compatible(record_target, target)
    return _COMPATIBLE[key]


def _compatible(a: tvm.target.Target, b: tvm.target.Target) -> bool:
    if a.kind.name != b.kind.name:
        return False
    if a.kind.name != "llvm":
        return str(a.attrs.get("arch", "")) == str(b.attrs.get("arch", ""))
    arch = [str(t.attrs.get("mtriple", "")).split("-")[0] for t in (a, b)]
    fa, fb = _features(a), _features(b)
    return arch[0] == arch[1] and fa <= fb and ("avx512f" in fa) == ("avx512f" in fb)


def mean_secs(rec: ms.database.TuningRecord) -> float:
    """A record's measured time: the mean of its runs, in seconds."""
    return statistics.mean(float(s) for s in rec.run_secs)


def best_record(db: ms.database.Database, workload: tvm.IRModule, target: tvm.target.Target
                ) -> ms.database.TuningRecord | None:
    """The fastest measured record for ``workload`` usable on ``target``."""
    if not db.has_workload(workload):
        return None
    for rec in db.get_top_k(db.commit_workload(workload), 1 << 16):
        if rec.run_secs and compatible(rec.target, target):
            return rec
    return None


def replay(record: ms.database.TuningRecord, func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` scheduled by ``record``'s trace, with its attributes, marked scheduled."""
    sch = tvm.s_tir.Schedule(canonical(func))
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    new = sch.mod["main"]
    for key, value in func.attrs.items():
        new = new.with_attr(key, value)
    return new.with_attr("tirx.is_scheduled", True)


def apply_database(db: ms.database.Database | None, target: tvm.target.Target,
                   applied: list[str]) -> tvm.transform.Pass:
    """Schedule each kernel that has a compatible record; ``applied`` collects their names.

    A record that no longer replays (e.g. written by another TVM version) is skipped with a
    log line: the kernel then gets the default rules like any other.
    """

    @tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        applied.clear()
        if db is None:
            return mod
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            try:
                rec = best_record(db, canonical(func), target)
                if rec is None:
                    continue
                updates[gv] = replay(rec, func)
                applied.append(gv.name_hint)
            except Exception as err:  # a stale record must not fail the compile
                logger.warning("tuning record for %s does not replay (%s); using the default "
                               "rules", gv.name_hint, err)
        if not updates:
            return mod
        mod = mod.clone()
        for gv, func in updates.items():
            mod.update_func(gv, func)
        return mod

    return _pass
