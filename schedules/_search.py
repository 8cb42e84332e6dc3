"""The tuning loop: seed each kernel with its default schedule, then rounds of MetaSchedule's
evolutionary search on the kernel that costs the most, until the time budget is spent."""

from __future__ import annotations

import json
import logging
import statistics
import time

import numpy as np
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from tvmcompress.schedules import _measure

logger = logging.getLogger(__name__)
POPULATION = 64  # MetaSchedule's 512 costs tens of seconds of search per round on 2 cores
MIN_NEW = 8  # unmeasured samples a round needs (MetaSchedule: 50); our spaces can be small


def best_secs(db: ms.database.Database, task, target: tvm.target.Target) -> float | None:
    from tvmcompress.schedules.tunedb import best_record, mean_secs

    rec = best_record(db, task.mod, target)
    return mean_secs(rec) if rec else None


def measured_trials(db: ms.database.Database, task) -> int:
    if not db.has_workload(task.mod):
        return 0
    return len(db.get_top_k(db.commit_workload(task.mod), 1 << 16))


def default_schedule(task, target: tvm.target.Target) -> tvm.s_tir.Schedule | None:
    """The schedule our default rules give the kernel (build.rules_for, as builds apply it)."""
    from tvmcompress.schedules.build import rules_for
    from tvmcompress.schedules.guard import Guarded

    for rule in rules_for(target):
        sch = Guarded(rule).apply(task.mod["main"], target, False)
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is not None:
            return sch
    return None


def seed_default(task, db, target, builder, runner) -> None:
    """Measure the default schedule and commit it as a record (once per workload+target).

    The trace is replayed on a fresh schedule first: only a trace that reproduces the
    default schedule may stand for it in the database.
    """
    sch = default_schedule(task, target)
    if sch is None:
        return
    replayed = tvm.s_tir.Schedule(task.mod)
    sch.trace.apply_to_schedule(replayed, remove_postproc=False)
    if not tvm_ffi.structural_equal(replayed.mod, sch.mod):
        logger.warning("default schedule of %s does not replay from its trace; not seeded",
                       task.name)
        return
    run_secs = _measure.measure(sch, target, builder, runner)
    if isinstance(run_secs, str):
        logger.warning("default schedule of %s not seeded: %s", task.name, run_secs[:2000])
        return
    task.default_secs = statistics.mean(run_secs)
    workload = db.commit_workload(task.mod)
    for rec in db.get_top_k(workload, 1 << 16):
        if str(rec.target) == str(target) and _same_trace(rec.trace, sch.trace):
            return  # a rerun: the default is already recorded
    args = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, run_secs, target, args))


def _same_trace(a, b) -> bool:
    return json.dumps(a.as_json(), default=str) == json.dumps(b.as_json(), default=str)


# Explicit unroll depths the CPU search samples: MetaSchedule's 512 as well lets a candidate
# unroll enough code that LLVM compiles it for minutes (a MobileNetV2 candidate held a 600 s
# tuning run in LLVM, at its first call, for over 10 minutes on a Zen 5). That compile runs in
# this process and cannot be cut off at the deadline.
UNROLL_STEPS = (0, 16, 64)


def _space(target) -> ms.space_generator.PostOrderApply:
    """MetaSchedule's generic rules for the target's kind, CPU unrolling capped at
    ``UNROLL_STEPS``. Its own pick for an x86 CPU with AVX-512 (VNNI) adds int8 rules over
    ``tvm.s_tir.tensor_intrin``'s intrinsics, which ``no_intrinsics`` keeps unloaded (importing
    them takes 20-120 s); our int8 kernels have their own design spaces (``spaces.py``)."""
    kind = "cuda" if target.kind.name == "cuda" else "llvm"
    rules = list(ms.schedule_rule.ScheduleRule.create(kind))
    if kind == "llvm":
        unroll = ms.schedule_rule.ParallelizeVectorizeUnroll
        rules = [unroll(max_jobs_per_core=r.max_jobs_per_core,
                        max_vectorize_extent=r.max_vectorize_extent,
                        unroll_max_steps=list(UNROLL_STEPS), unroll_explicit=r.unroll_explicit)
                 if isinstance(r, unroll) else r for r in rules]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=kind,
                                             mutator_probs=kind)


def run_round(task, n: int, db, target, builder, runner, cost_model, work_dir: str,
              seed: int) -> None:
    """``n`` trials of evolutionary search on one kernel, measured and committed to ``db``.
    Our tensorized rules are design spaces (``spaces.py``); they read the target from the
    context."""
    from tvmcompress.schedules import spaces

    spaces.register()
    with _measure.no_intrinsics():
        strategy = ms.search_strategy.EvolutionarySearch(population_size=POPULATION,
                                                         init_min_unmeasured=MIN_NEW)
        ctx = ms.TuneContext(mod=task.mod, target=target, space_generator=_space(target),
                             search_strategy=strategy, task_name=task.name,
                             rand_state=seed, num_threads=2,
                             logger=logging.getLogger("tvmcompress.metaschedule"))
    with target:
        ms.tune.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=work_dir,
                           max_trials_global=n, num_trials_per_iter=n, builder=builder,
                           runner=runner, database=db, cost_model=cost_model,
                           task_scheduler="round-robin")


def _tuned_and_default(task, db, target):
    """(the database's best record, the default schedule) when the best is a tuned schedule
    other than the default; else (None, None)."""
    from tvmcompress.schedules.tunedb import best_record

    rec, default = best_record(db, task.mod, target), default_schedule(task, target)
    if rec is None or default is None or _same_trace(rec.trace, default.trace):
        return None, None
    return rec, default


def verify(task, db, target, builder, runner, deadline: _measure.Deadline,
           margin: float = 0.03, rounds: int = 2) -> None:
    """Keep the database's best for ``task`` only if it beats the default schedule head to head.

    Times measured minutes apart on a shared machine do not compare: a default seeded while
    the machine was busy makes every later candidate look faster. So both are measured again,
    alternately, now. If the best does not win by ``margin``, the default's trace is committed
    with the best's stored time scaled by the head-to-head ratio (at most 0.999 of it), so
    compiles pick the default again.
    """
    rec, default = _tuned_and_default(task, db, target)
    if rec is None:
        return
    tuned = tvm.s_tir.Schedule(task.mod)
    rec.trace.apply_to_schedule(tuned, remove_postproc=False)
    times: dict[str, list[float]] = {"default": [], "tuned": []}
    for _ in range(rounds):
        for name, sch in (("default", default), ("tuned", tuned)):
            if deadline.passed():
                return
            with deadline.unit():
                secs = _measure.measure(sch, target, builder, runner)
            if isinstance(secs, str):
                return
            times[name].append(statistics.median(secs))
    ratio = statistics.median(times["default"]) / statistics.median(times["tuned"])
    if ratio >= 1 / (1 - margin):
        return
    logger.info("%s: the tuned record is not faster than the default head to head (%.2fx); "
                "keeping the default", task.name, ratio)
    _keep_default(task, db, target, rec, default, ratio)


def _keep_default(task, db, target, rec, default, ratio: float) -> None:
    """Commit the default's trace as the best record: timed at the best's stored time scaled
    by ``ratio`` (default / tuned, at most 0.999), so compiles pick the default again."""
    from tvmcompress.schedules.tunedb import mean_secs

    stored = mean_secs(rec)
    args = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    db.commit_tuning_record(ms.database.TuningRecord(
        default.trace, db.commit_workload(task.mod), [stored * min(ratio, 0.999)], target, args))
    task.best_secs = task.default_secs


def verify_in_model(mod: tvm.IRModule, preset, tasks, db, target, deadline: _measure.Deadline,
                    margin: float = 0.03, rounds: int = 15) -> None:
    """Keep a tuned record only where its kernel is faster inside the model.

    A kernel timed alone, over and over, has its weights in cache; in the model they are
    streamed from memory after the other layers ran. Schedules MetaSchedule found faster
    alone were up to 1.35x slower in ResNet-18 on a Zen 5, and the tuned build as a whole
    slower than the default one. So the model is built twice (with the records, and with the
    default rules only) and both are run alternately, each kernel timed by a VM instrument;
    a task whose kernels do not win by ``margin`` in the model gets its default back.
    Skipped (with a log line) for models with dynamic input shapes or past the deadline."""
    from tvmcompress.schedules.build import build
    from tvmcompress.schedules.cpu.common import static_shape

    params = mod["main"].params
    shapes = [static_shape(p) for p in params]
    if None in shapes or deadline.passed():
        logger.info("tuned records not checked in the model: %s", "dynamic input shapes"
                    if None in shapes else "time budget spent")
        return
    with deadline.unit():
        tuned_exe, info = build(mod, preset, database=db)
    if not info.from_database or deadline.passed():
        return
    with deadline.unit():
        default_exe, _ = build(mod, preset)
    rng = np.random.default_rng(0)
    dtypes = [str(p.ty.dtype) for p in params]  # integer inputs (token ids, masks): zeros
    inputs = [tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype) if "float" in dtype
                                 else np.zeros(shape, dtype))
              for shape, dtype in zip(shapes, dtypes, strict=True)]
    times = _kernel_times({"default": default_exe, "tuned": tuned_exe}, inputs, rounds,
                          deadline)
    for task in tasks:
        kernels = [n for n in task.names if n in info.from_database]
        rec, default = _tuned_and_default(task, db, target)
        if not kernels or rec is None:
            continue
        spent = {k: sum(statistics.median(v[n]) for n in kernels if n in v)
                 for k, v in times.items()}
        if not spent["tuned"] or not spent["default"]:
            continue
        ratio = spent["default"] / spent["tuned"]
        if ratio < 1 / (1 - margin):
            logger.info("%s: the tuned record is %.2fx the default's speed in the model; "
                        "keeping the default", task.name, ratio)
            _keep_default(task, db, target, rec, default, ratio)


def _kernel_times(executables: dict, inputs, rounds: int, deadline: _measure.Deadline
                  ) -> dict[str, dict[str, list[float]]]:
    """Per executable, seconds per call of each kernel over ``rounds`` runs of the model,
    the executables taking turns (after a warm-up each)."""
    from tvm import relax

    from tvmcompress.profile import call_timer

    times: dict[str, dict[str, list[float]]] = {name: {} for name in executables}
    mains = {}
    for name, executable in executables.items():
        vm = relax.VirtualMachine(executable, tvm.cpu())
        for _ in range(3):
            vm["main"](*inputs)
        vm.set_instrument(call_timer(times[name]))
        mains[name] = vm["main"]
    for _ in range(rounds):
        for main in mains.values():
            if deadline.passed():
                return times
            main(*inputs)
    return times


def pick(tasks, trials_cap: int | None):
    """The kernel to tune next: most time (calls x best time), decaying with rounds spent."""
    def left(t) -> int:
        return (trials_cap - t.trials) if trials_cap else 1 << 30

    ready = [t for t in tasks if left(t) > 0]
    if not ready:
        return None, 0
    task = max(ready, key=lambda t: t.weight * (t.best_secs or 1e-3) * 0.7 ** t.rounds)
    return task, left(task)


def search(tasks, db, target, builder, runner, deadline: _measure.Deadline, trials_cap,
           work_dir, on_round, per_trial: float, per_round: int = 8) -> int:
    """Rounds until ``deadline``; returns the trials run. A round is started only when its
    predicted cost (search overhead + trials x ``per_trial``, both re-estimated from each
    round) fits in the time left; builds and runs past the deadline are skipped anyway."""
    cost_model = _measure.DeadlineCostModel(deadline)
    overhead, trials = 5.0, 0  # search seconds per round: a first guess, then measured
    while True:
        task, left = pick(tasks, trials_cap)
        budget = deadline.left() - overhead
        n = min(per_round, left, int(budget / per_trial))
        if task is None or n < 1:
            return trials
        start = time.perf_counter()
        cost_model.round_started()
        try:
            run_round(task, n, db, target, builder, runner, cost_model, work_dir,
                      seed=task.rounds + 1)
        except Exception:  # TimeBudgetSpent, wrapped by the C++ search it went through
            if not deadline.passed():
                raise
            logger.info("round %d of %s stopped at the deadline", task.rounds + 1, task.name)
        elapsed = time.perf_counter() - start
        overhead = max(0.5, elapsed - n * per_trial)
        logger.info("round %d: %s, %d trials, %.1f s", task.rounds + 1, task.name, n, elapsed)
        task.rounds += 1
        task.trials += n
        trials += n
        task.best_secs = best_secs(db, task, target)
        on_round(trials)
