"""Tuning: time bound, database written and reused, resume, concurrent writers, corrupt files,
target matching, the shipped database."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tvm.s_tir import meta_schedule as ms
from tvm.target import codegen

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.reference import ort_run
from tvmcompress.schedules import _measure, _search, tunedb
from tvmcompress.schedules.build import fusion_passes
from tvmcompress.schedules.tune import extract_tasks, tune, tuning_target

M, K, N = 16, 64, 128


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """No per-user database from other runs on this machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def gemm_model() -> tc.Model:
    w = np.random.default_rng(0).standard_normal((K, N)).astype("float32")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Relu", ["m"], ["y"])], "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(w, "w")])
    return tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Tune the GEMM for 4 trials (plus the seeded default) into a fresh database."""
    db = tmp_path_factory.mktemp("db")
    model = gemm_model()
    result = tune(model.mod, tc.resolve_target("host"),
                  tc.Tune(seconds=60, trials=4, database=db, progress=False))
    return model, db, result


def test_tune_config_errors_name_the_field():
    for kwargs, field in [({"seconds": 0}, "seconds"), ({"seconds": float("inf")}, "seconds"),
                          ({"trials": 0}, "trials"), ({"top_k": -1}, "top_k"),
                          ({"database": 3}, "database")]:
        with pytest.raises(tc.ConfigError, match=f"Tune.{field}"):
            tc.Tune(**kwargs)
    with pytest.raises(tc.ConfigError, match=r"tc\.Tune"):
        tc.compile(gemm_model(), "host", tune=600)


def test_tuning_writes_a_database_that_compiles_apply(tuned):
    model, db, result = tuned
    assert result.trials == 4 and len(result.tasks) == 1
    assert result.tasks[0].default_secs is not None  # the default schedule was seeded
    records = tunedb.read_records(db)
    assert len(records) >= 2 and all(r.run_secs for r in records)
    x = {"x": np.random.default_rng(1).standard_normal((M, K)).astype("float32")}
    plain = tc.compile(model, "host")
    reused = tc.compile(model, "host", database=db)
    assert plain.build_info.from_database == []
    assert reused.build_info.from_database == [result.tasks[0].name]
    expected = ort_run(model.onnx_model, x)["y"]
    np.testing.assert_allclose(reused.run(x)["y"], plain.run(x)["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reused.run(x)["y"], expected, rtol=1e-4, atol=1e-4)


def test_database_best_is_never_worse_than_the_default(tuned):
    _, db, result = tuned
    task = result.tasks[0]
    best = tunedb.best_record(tunedb.load([db]), task.mod, tc.resolve_target("host").tvm_target)
    assert np.mean([float(s) for s in best.run_secs]) <= task.default_secs * 1.001  # JSON


def test_rerun_resumes_without_repeating(tuned):
    model, db, _ = tuned
    before = len(tunedb.read_records(db))
    again = tune(model.mod, tc.resolve_target("host"),
                 tc.Tune(seconds=60, trials=4, database=db, progress=False))
    assert again.trials == 0  # the 4 trials are in the database already
    assert len(tunedb.read_records(db)) == before  # and the default is not recorded twice


def test_records_slower_in_the_model_give_way_to_the_default():
    """A record that claims to be the fastest but leaves the kernel unscheduled (plain loops,
    many times slower) is replaced by the default schedule once both builds of the model
    are timed side by side."""
    model, preset = gemm_model(), tc.resolve_target("host")
    target = tuning_target(preset.tvm_target)
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(model.mod)
    (task,) = extract_tasks(fused, None)
    db = ms.database.MemoryDatabase()
    args = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    plain = tvm.s_tir.Schedule(task.mod)  # loops looked up, nothing changed (an empty trace
    plain.get_loops(plain.get_child_blocks(plain.get_sblock("root"))[0])  # is not a record)
    db.commit_tuning_record(ms.database.TuningRecord(
        plain.trace, db.commit_workload(task.mod), [1e-7], target, args))
    default = _search.default_schedule(task, target)
    assert not _search._same_trace(tunedb.best_record(db, task.mod, target).trace, default.trace)
    _search.verify_in_model(model.mod, preset, [task], db, target, _measure.Deadline(60))
    assert _search._same_trace(tunedb.best_record(db, task.mod, target).trace, default.trace)


def test_cpu_search_caps_explicit_unrolling():
    """MetaSchedule's 512-step explicit unroll is left out of the CPU space: LLVM compiled one
    such candidate for over 10 minutes, in-process, past any deadline."""
    space = _search._space(tuning_target(tc.resolve_target("host").tvm_target))
    steps = [tuple(r.unroll_max_steps) for r in space.sch_rules
             if isinstance(r, ms.schedule_rule.ParallelizeVectorizeUnroll)]
    assert steps == [_search.UNROLL_STEPS] and max(_search.UNROLL_STEPS) <= 64


def test_time_budget_is_respected(tmp_path):
    """No trial cap: only the deadline ends this run. Each unit of work (a build, a timed run,
    a cost-model call, a round's start) starts before the deadline, so the run may end one
    unit past it; how long a unit takes depends on how loaded the machine is, so the margin
    is the longest unit this very run measured."""
    start = time.perf_counter()
    result = tune(gemm_model().mod, tc.resolve_target("host"),
                  tc.Tune(seconds=10, database=tmp_path, progress=False))
    wall = time.perf_counter() - start
    assert result.trials > 0
    assert 0 < result.longest_step < wall
    assert wall <= 10 + 2 * result.longest_step + 2, \
        f"tuning took {wall:.1f} s for a 10 s budget (longest step {result.longest_step:.1f} s)"
    assert result.seconds <= wall


def _record(i: int) -> ms.database.TuningRecord:
    func = tvm.te.create_prim_func([a := tvm.te.placeholder((i + 1,), name="a"),
                                    tvm.te.compute((i + 1,), lambda j: a[j] * 2.0)])
    mod = tunedb.canonical(func)
    return mod, tvm.s_tir.Schedule(mod).trace


def _writer(shared: str, first: int) -> None:
    for i in range(first, first + 8):
        private = Path(shared).parent / f"private-{i}"
        private.mkdir(parents=True)
        db = ms.database.JSONDatabase(work_dir=str(private))
        mod, trace = _record(i)
        target = tvm.target.Target("llvm")
        db.commit_tuning_record(ms.database.TuningRecord(
            trace, db.commit_workload(mod), [1e-3], target,
            ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        tunedb.merge(private, Path(shared))


def test_merge_keeps_the_faster_time_of_a_schedule_it_holds(tmp_path):
    """Tuning gives a kernel its default back by committing the default's trace again, timed
    below the record that lost. The shared database holds that trace already (seeded first):
    the merge must take the faster time, not drop the copy as a duplicate."""
    mod, trace = _record(3)
    target = tvm.target.Target("llvm")
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    shared = tmp_path / "shared"
    for i, secs in enumerate((2e-3, 1e-3, 3e-3)):
        private = tmp_path / f"private-{i}"
        private.mkdir()
        db = ms.database.JSONDatabase(work_dir=str(private))
        db.commit_tuning_record(ms.database.TuningRecord(
            trace, db.commit_workload(mod), [secs], target, args))
        tunedb.merge(private, shared)
    (rec,) = tunedb.read_records(shared)
    assert [float(s) for s in rec.run_secs] == pytest.approx([1e-3], rel=1e-6)


def test_concurrent_writers_merge_every_record(tmp_path):
    shared = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(shared), first)) for first in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = tunedb.read_records(shared)
    assert len(records) == 16
    assert len({tvm_ffi.structural_hash(r.workload.mod) for r in records}) == 16


def test_interrupted_merge_leaves_the_database_valid(tuned, tmp_path, monkeypatch):
    _, db, _ = tuned
    shared = tmp_path / "shared"
    _writer(str(shared), 0)
    before = (shared / tunedb.RECORDS).read_text()

    def crash(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tunedb.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        tunedb.merge(db, shared)
    assert (shared / tunedb.RECORDS).read_text() == before
    assert len(tunedb.read_records(shared)) == 8
    assert not list(shared.glob(".merge-*"))


def test_corrupt_database_error_names_the_file(tuned, tmp_path):
    model, db, _ = tuned
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in (tunedb.WORKLOADS, tunedb.RECORDS):
        (bad / name).write_text((db / name).read_text())
    (bad / tunedb.RECORDS).write_text((bad / tunedb.RECORDS).read_text() + "{not json\n")
    content = (bad / tunedb.RECORDS).read_text()
    with pytest.raises(tc.ConfigError, match=f"{bad / tunedb.RECORDS}.*line"):
        tc.compile(model, "host", database=bad)
    with pytest.raises(tc.ConfigError, match=str(bad / tunedb.RECORDS)):
        tune(model.mod, tc.resolve_target("host"), tc.Tune(seconds=5, database=bad))
    assert (bad / tunedb.RECORDS).read_text() == content
    with pytest.raises(tc.ConfigError, match="does not exist"):
        tc.compile(model, "host", database=tmp_path / "missing")


def test_target_matching():
    avx2 = tuning_target(tc.resolve_target("x86-64-avx2").tvm_target)
    host = tc.resolve_target("host").tvm_target
    # an AVX2-only host (Zen 3) has every x86-64-v3 feature; an AVX-512 one (Zen 5) has them
    # too, but its tiles are measured with other vector lanes
    assert tunedb.compatible(avx2, host) == (not codegen.target_has_features("avx512f", host))
    assert tunedb.compatible(avx2, tc.resolve_target("x86-64-avx2").tvm_target)
    assert not tunedb.compatible(avx2, tc.resolve_target("x86-64-avx512").tvm_target)
    assert not tunedb.compatible(avx2, tc.resolve_target("x86-64").tvm_target)  # no AVX2
    assert not tunedb.compatible(avx2, tc.resolve_target("aarch64").tvm_target)


def test_default_schedules_replay_from_their_traces():
    """Seeding needs every default schedule's trace to reproduce it (zoo CNN kernels)."""
    model = tc.load(zoo.build("cnn", 1), input_shapes={"x": (1, 3, 32, 32)})
    target = tuning_target(tc.resolve_target("x86-64-avx2").tvm_target)
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(model.mod)
    for task in extract_tasks(fused, None):
        sch = _search.default_schedule(task, target)
        replayed = tvm.s_tir.Schedule(task.mod)
        sch.trace.apply_to_schedule(replayed, remove_postproc=False)
        assert tvm_ffi.structural_equal(replayed.mod, sch.mod), task.name


def test_shipped_database_applies_to_zoo_models():
    """The shipped records are for the test zoo on x86-64-avx2 (and a Zen 3 host); whichever
    kernels they schedule, the outputs still match onnxruntime."""
    assert (tunedb.SHIPPED / tunedb.RECORDS).is_file()
    assert sum(f.stat().st_size for f in tunedb.SHIPPED.iterdir()) < 200_000
    applied = 0
    for name, batch in (("mlp", 1), ("transformer", 1), ("transformer", 8)):
        model = tc.load(zoo.build(name, batch), input_shapes={"x": (batch, *zoo.ZOO[name][1])})
        compiled = tc.compile(model, "x86-64-avx2")
        if not compiled.build_info.from_database:
            continue
        applied += 1
        host = tc.resolve_target("host").tvm_target  # AVX2 records apply on an AVX2 host only
        assert bool(tc.compile(model, "host").build_info.from_database) \
            == tunedb.compatible(tuning_target(tc.resolve_target("x86-64-avx2").tvm_target), host)
        x = {"x": np.random.default_rng(0).standard_normal(
            (batch, *zoo.ZOO[name][1])).astype("float32")}
        expected = ort_run(model.onnx_model, x)["y"]
        np.testing.assert_allclose(compiled.run(x)["y"], expected, rtol=1e-4, atol=1e-4)
    assert applied, "no shipped record matched the zoo's MLP or transformer"
