"""Tuning an int8 kernel searches our tensorized rule's space (``schedules/spaces.py``): every
candidate keeps the AVX2 intrinsic, tile sizes are sampled decisions, the tuned build is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress.schedules import spaces, tunedb
from tvmcompress.schedules.intrin.x86_int8 import DOT_U8S8
from tvmcompress.schedules.tune import tune

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
    for rec in records:
        trace = json.dumps(rec.trace.as_json(), default=str)
        assert DOT_U8S8 in trace, "a candidate lost the AVX2 intrinsic"
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
