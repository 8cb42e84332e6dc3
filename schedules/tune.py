"""MetaSchedule tuning bounded by wall time, starting from our default schedules, into a
shared database that later compiles reuse.

MetaSchedule counts trials, not seconds, so we tune in short rounds (one kernel, a few
trials each), estimate the next round's cost from the last ones and stop before the budget
runs out. Before searching a kernel we measure its default-rule schedule and commit it as a
record: the evolutionary search samples its first population from the database's best
records, and the database's best for a kernel is never worse than the default. Each round
is merged into the shared database (``tunedb.merge``), so an interrupted run keeps what it
measured and a rerun starts from it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from tvmcompress.errors import ConfigError
from tvmcompress.schedules import _measure, tunedb

logger = logging.getLogger(__name__)
TRIALS_PER_ROUND = 8
VERIFY_SHARE = 0.15  # of the budget, kept for re-measuring each tuned kernel against its default


@dataclass(frozen=True)
class Tune:
    """Tuning settings for ``tc.compile(..., tune=tc.Tune(seconds=600))``.

    ``seconds`` bounds the whole tuning wall time; ``trials`` optionally caps the measured
    trials per kernel (records already in the database count, so a rerun continues);
    ``database`` is the directory records go to (default: :func:`tunedb.default_dir`);
    ``top_k`` tunes only the k kernels with the most FLOPs (all by default).
    """

    seconds: float = 600.0
    trials: int | None = None
    database: str | Path | None = None
    top_k: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int | float) or not math.isfinite(self.seconds) \
                or self.seconds <= 0:
            raise ConfigError(f"Tune.seconds must be a positive number of seconds, got "
                              f"{self.seconds!r}")
        for name in ("trials", "top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"Tune.{name} must be None or an integer >= 1, got {value!r}")
        if self.database is not None and not isinstance(self.database, str | Path):
            raise ConfigError(f"Tune.database must be a directory path, got "
                              f"{type(self.database).__name__}")

    @property
    def directory(self) -> Path:
        return Path(self.database).expanduser() if self.database else tunedb.default_dir()


@dataclass
class Task:
    """One distinct kernel: its canonical workload, call count, the names of the fused
    functions that are it, and what tuning found."""

    name: str
    mod: tvm.IRModule
    weight: int
    flops: float
    names: list[str] = field(default_factory=list)
    default_secs: float | None = None
    best_secs: float | None = None
    trials: int = 0
    rounds: int = 0


@dataclass
class TuneResult:
    """What a tuning run did: wall seconds, trials measured, per-kernel default vs best."""

    seconds: float = 0.0
    trials: int = 0
    tasks: list[Task] = field(default_factory=list)
    longest_step: float = 0.0  # the longest unit of work: how far past the budget a run can end

    @property
    def speedup(self) -> float:
        """Estimated model speedup over the default rules (kernel times x call counts)."""
        done = [t for t in self.tasks if t.default_secs and t.best_secs]
        best = sum(t.weight * t.best_secs for t in done)
        return sum(t.weight * t.default_secs for t in done) / best if best else 1.0


def tuning_target(target: tvm.target.Target) -> tvm.target.Target:
    """``target`` with ``num-cores`` set (MetaSchedule's CPU rules need it)."""
    config = dict(target.export())
    if config.get("kind") == "llvm" and not config.get("num-cores"):
        config["num-cores"] = len(os.sched_getaffinity(0))
    return tvm.target.Target({k: v for k, v in config.items() if k not in ("keys", "features")})


def extract_tasks(fused: tvm.IRModule, top_k: int | None) -> list[Task]:
    """The distinct kernels of a fused module, heaviest (FLOPs x calls) first."""
    calls: Counter[str] = Counter()
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for func in fused.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: calls.update(
                [e.args[0].name_hint] if isinstance(e, relax.Call) and e.op == call_tir else []))
    tasks: dict[int, Task] = {}
    for gv, func in fused.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        mod = tunedb.canonical(func)
        key = tvm_ffi.structural_hash(mod)
        if key in tasks:
            tasks[key].weight += max(calls[gv.name_hint], 1)
            tasks[key].names.append(gv.name_hint)
            continue
        flops = float(tvm.s_tir.analysis.estimate_tir_flops(mod))
        tasks[key] = Task(gv.name_hint, mod, max(calls[gv.name_hint], 1), flops, [gv.name_hint])
    ordered = sorted(tasks.values(), key=lambda t: -t.flops * t.weight)
    total = sum(t.flops * t.weight for t in ordered) or 1.0
    ordered = [t for t in ordered if t.flops * t.weight >= 0.005 * total]  # skip trivial kernels
    return ordered[:top_k] if top_k else ordered


def tune(mod: tvm.IRModule, preset, config: Tune) -> TuneResult:
    """Tune the kernels of ``mod`` (the compressed Relax module ``build`` would compile) for
    ``preset`` within ``config.seconds``, merging records into ``config.directory``."""
    from tvmcompress.schedules import _search
    from tvmcompress.schedules.build import fusion_passes

    start = time.perf_counter()
    deadline = _measure.Deadline(config.seconds)
    reason = preset.why_not_runnable_here()
    if reason or preset.is_gpu:
        raise ConfigError(f"Tuning measures kernels on this machine, so it needs a target that "
                          f"runs here (CPU): {reason or preset.name + ' is a GPU target'}. "
                          "Tune on the device, or compile with a database tuned there")
    target = tuning_target(preset.tvm_target)
    with target, deadline.unit():
        fused = tvm.transform.Sequential(fusion_passes(target))(mod)
        result = TuneResult(tasks=extract_tasks(fused, config.top_k))
    shared = config.directory
    private = Path(tempfile.mkdtemp(prefix="tvmcompress-tune-"))
    bar = _progress(config, result)
    try:
        db = ms.database.JSONDatabase(work_dir=str(private))
        keys = {tvm_ffi.structural_hash(t.mod) for t in result.tasks}
        with tunedb.locked(shared, exclusive=False) if shared.is_dir() else _nothing():
            tunedb.copy_records([r for r in tunedb.read_records(shared)
                                 if tvm_ffi.structural_hash(r.workload.mod) in keys], db)
        builder = _measure.InProcessBuilder(deadline)
        runner = _measure.InProcessRunner(deadline)
        seeded = time.perf_counter()
        for task in result.tasks:
            if deadline.passed():
                break
            task.trials = _search.measured_trials(db, task)
            with deadline.unit():
                _search.seed_default(task, db, target, builder, runner)
            task.best_secs = _search.best_secs(db, task, target)
        # A trial costs about what measuring a default schedule did (build + timed runs).
        per_trial = max(0.2, (time.perf_counter() - seeded) / max(len(result.tasks), 1))
        tunedb.merge(private, shared)

        def on_round(trials: int) -> None:
            result.trials = trials
            tunedb.merge(private, shared)
            _update(bar, result, start)

        search_until = _measure.Deadline(deadline.left() * (1 - VERIFY_SHARE))
        _search.search(result.tasks, db, target, builder, runner, search_until, config.trials,
                       str(private), on_round, per_trial)
        deadline.record(search_until.longest)
        verify_until = _measure.Deadline(deadline.left() / 2)  # half for the model check
        for task in result.tasks:  # heaviest first
            _search.verify(task, db, target, builder, runner, verify_until)
        deadline.record(verify_until.longest)
        _search.verify_in_model(mod, preset, result.tasks, db, target, deadline)
        tunedb.merge(private, shared)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        result.seconds = time.perf_counter() - start
        result.longest_step = deadline.longest
        _update(bar, result, start)
        bar.close()
    logger.info("tuned %d kernels in %.0f s, %d trials, estimated speedup %.2fx (longest "
                "step %.1f s)", len(result.tasks), result.seconds, result.trials,
                result.speedup, result.longest_step)
    return result


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _progress(config: Tune, result: TuneResult):
    from tqdm.auto import tqdm

    return tqdm(total=round(config.seconds), unit="s", desc="tuning", disable=not config.progress,
                bar_format="{desc}: {n:.0f}/{total} s |{bar}| {postfix}")


def _update(bar, result: TuneResult, start: float) -> None:
    bar.n = min(round(time.perf_counter() - start), bar.total)
    bar.set_postfix_str(f"{result.trials} trials, {len(result.tasks)} kernels, best "
                        f"{result.speedup:.2f}x vs default")
