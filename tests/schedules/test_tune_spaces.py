"""What tuning searches and what it keeps: an int8 kernel is searched in our tensorized rule's
space (``schedules/spaces.py``: every candidate keeps the AVX2 intrinsic, tile sizes are sampled
decisions, the tuned build is exact), and a record that does not beat the default head to head
is not what compiles get (``_search.verify``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tvm.target import codegen

import tvmcompress as tc
from tvmcompress.schedules import _measure, _search, spaces, tunedb
from tvmcompress.schedules.build import fusion_passes
from tvmcompress.schedules.intrin.x86_int8 import DOT_U8S8, DOT_VNNI
from tvmcompress.schedules.tune import extract_tasks, tune, tuning_target

M, K, N = 64, 256, 256


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def _int8_model():
    w = np.random.default_rng(0).standard_normal((K, N)).astype("float32")
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
                          [numpy_helper.from_array(w, "w")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return model, tc.CompressConfig(passes=[tc.QuantizeConfig(scheme="int8-dynamic")])


def test_int8_kernel_tunes_within_our_tensorized_space(tmp_path):
    model, config = _int8_model()
    default = tc.compile(model, "host", config=config)
    result = tune(default.ir, tc.resolve_target("host"),
                  tc.Tune(seconds=120, trials=8, database=tmp_path, progress=False, top_k=1))
    (task,) = result.tasks
    assert "int8_gemm" in task.name and task.trials >= 8
    records = tunedb.read_records(tmp_path)
    assert len(records) > 1  # the seeded default and searched candidates
    # 8-bit weights on VNNI (vpdpbusd), 7-bit ones on AVX2 (vpmaddubsw)
    vnni = codegen.target_has_features("avx512vnni", tc.resolve_target("host").tvm_target)
    intrin = DOT_VNNI if vnni else DOT_U8S8
    for rec in records:
        trace = json.dumps(rec.trace.as_json(), default=str)
        assert intrin in trace, f"a candidate lost the {intrin} intrinsic"
    sampled = [r for r in records if "SampleCategorical" in json.dumps(r.trace.as_json(),
                                                                        default=str)]
    assert sampled, "no record came from the sampled design space"
    tuned = tc.compile(model, "host", config=config, database=tmp_path)
    assert tuned.build_info.from_database == [task.name]
    x = np.random.default_rng(1).standard_normal((M, K)).astype("float32")
    np.testing.assert_array_equal(tuned.run([x])["y"], default.run([x])["y"])


def test_design_space_registration_is_idempotent():
    spaces.register()
    spaces.register()
    name = "s_tir.meta_schedule.cpu.tvmcompress.int8_gemm"
    assert tvm.get_global_func(name, allow_missing=True) is not None


def test_a_stale_lucky_record_loses_to_the_default_head_to_head(tmp_path):
    """A naive (unscheduled) loop nest recorded with an impossibly fast time, as a noisy
    measurement could: verify measures both again and compiles get the default back."""
    from tvm.s_tir import meta_schedule as ms

    model, _ = _int8_model()
    target = tuning_target(tc.resolve_target("host").tvm_target)
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(tc.load(model).mod)
    task = extract_tasks(fused, 1)[0]
    db = ms.database.JSONDatabase(work_dir=str(tmp_path))
    naive = tvm.s_tir.Schedule(task.mod)
    naive.get_sblock("root")  # MetaSchedule's databases skip records with an empty trace
    db.commit_tuning_record(ms.database.TuningRecord(
        naive.trace, db.commit_workload(task.mod), [1e-7], target,
        ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))
    assert tunedb.best_record(db, task.mod, target).run_secs[0].value == pytest.approx(1e-7)
    builder, runner = _measure.InProcessBuilder(), _measure.InProcessRunner()
    _search.verify(task, db, target, builder, runner, _measure.Deadline(120))
    best = tunedb.best_record(db, task.mod, target)
    default = _search.default_schedule(task, target)
    assert _search._same_trace(best.trace, default.trace)
