"""What made int8 models fast: erf as a vector polynomial (GELU epilogues), batched [b, s, K]
int8 GEMMs tensorized with their float tail fused, and the per-layer choice to keep convs
where int8 measured slower (depthwise, short reductions) in fp32, recorded for the report."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from schedule_helpers import run
from scipy.special import erf
from tvm import relax, te

import tvmcompress as tc
from tvmcompress.passes.pipeline import run_passes
from tvmcompress.passes.quantize import QuantizeConfig
from tvmcompress.schedules import build
from tvmcompress.targets import resolve_target

CPU = "x86-64-avx2"  # the 8-lane code these tests look for, on any x86-64-v3 host


def test_erf_is_a_vector_polynomial_accurate_to_float32():
    """No scalar ``erff`` call left; error vs scipy's float64 erf within 1e-6 on [-6, 6]."""
    x = te.placeholder((4096,), "float32", "x")
    y = te.compute(x.shape, lambda i: te.erf(x[i]), name="y")
    func = te.create_prim_func([x, y])
    sch = tvm.s_tir.Schedule(func)
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    target = resolve_target(CPU).tvm_target
    lib = tvm.compile(sch.mod, target)
    source = lib.mod.inspect_source("ll") if hasattr(lib, "mod") else lib.inspect_source("ll")
    assert not re.search(r"@erff?\b", source) and "<8 x float>" in source
    xs = np.linspace(-6, 6, 4096).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib(tvm.runtime.tensor(xs), out)
    np.testing.assert_allclose(out.numpy(), erf(xs.astype(np.float64)), atol=1e-6)


def _vector_kernel(op) -> tvm.runtime.Module:
    x = te.placeholder((4096,), "float32", "x")
    y = te.compute(x.shape, lambda i: op(x[i]), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    return tvm.compile(sch.mod, resolve_target(CPU).tvm_target)


def test_exp_is_a_vector_polynomial_with_ieee_edges():
    """No scalar ``expf`` call left (softmax ran at ~2 GFLOP/s on them); relative error
    within 2e-7 where float32 exp is a normal number; NaN, +-inf, overflow and underflow
    as IEEE (softmax's fully masked rows depend on NaN staying NaN)."""
    lib = _vector_kernel(te.exp)
    source = lib.mod.inspect_source("ll") if hasattr(lib, "mod") else lib.inspect_source("ll")
    assert not re.search(r"@expf\b|llvm\.exp\.", source) and "<8 x float>" in source
    edges = [np.nan, np.inf, -np.inf, 0.0, 89.0, -104.0, 1e-9]
    xs = np.concatenate([np.linspace(-86, 88.7, 4096 - len(edges)), edges]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib(tvm.runtime.tensor(xs), out)
    got, ref = out.numpy(), np.exp(xs.astype(np.float64))
    body = slice(0, 4096 - len(edges))
    np.testing.assert_allclose(got[body], ref[body], rtol=2e-7)
    assert np.isnan(got[-7]) and got[-6] == np.inf and got[-5] == 0.0 and got[-4] == 1.0
    assert got[-3] == np.inf and got[-2] == 0.0 and got[-1] == np.float32(1.0)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_batched_gemm_is_tensorized_and_exact(x_dtype):
    """[3, 16, K] activations: rows tile the last row axis (a tile across batch rows could
    not be tensorized and fell back to scalar code)."""
    rng = np.random.default_rng(5)
    w = rng.integers(-64, 65, (96, 48)).astype(np.int8)
    lo, hi = (0, 256) if x_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (3, 16, 96)).astype(x_dtype)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, x_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(xv, relax.const(w), out_dtype="int32"))
        bb.emit_func_output(y)
    executable, info = build(bb.get(), resolve_target(CPU))
    assert not info.unscheduled
    assert "pmadd.ub.sw" in executable.mod.imports[0].inspect_source("ll")
    # The intrinsic's body is one expression: a TVMScript variable in it became an
    # alloc_local, i.e. two TVMBackendAllocWorkspace calls per tile, which serialized the
    # threads (128x768x3072 ran 2.1 ms on 1 thread, 2.8-4.0 ms on 2).
    assert "TVMBackendAllocWorkspace" not in executable.mod.imports[0].inspect_source("asm")
    out = run(executable, [x])
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.astype(np.int64))


def _convs() -> tc.Model:
    """depthwise 3x3 (16 ch) -> 1x1 16->64 (reduction 16) -> 1x1 64->32 (reduction 64)."""
    rng = np.random.default_rng(2)
    ws = {"dw": (16, 1, 3, 3), "short": (64, 16, 1, 1), "long": (32, 64, 1, 1)}
    nodes = [oh.make_node("Conv", ["x", "dw"], ["a"], group=16, pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["a", "short"], ["b"]),
             oh.make_node("Conv", ["b", "long"], ["y"])]
    graph = oh.make_graph(
        nodes, "convs", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
         for n, s in ws.items()])
    return tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def test_depthwise_and_short_reductions_stay_float_and_say_why():
    calib = {"x": np.random.default_rng(0).standard_normal((4, 16, 8, 8)).astype(np.float32)}
    _, rows = run_passes(_convs().mod, tc.CompressConfig([QuantizeConfig(
        scheme="int8", calibration=calib)]))
    got = {r["layer"]: (r["scheme"], r.get("note", "")) for r in rows}
    assert got["conv2d0"][0] == "fp32" and "depthwise" in got["conv2d0"][1]
    assert got["conv2d1"][0] == "fp32" and "reduction of 16" in got["conv2d1"][1]
    assert got["conv2d2"][0] == "int8"
    _, rows = run_passes(_convs().mod, tc.CompressConfig([QuantizeConfig(
        scheme="int8", calibration=calib, per_layer={"conv2d0": "int8"})]))
    assert {r["layer"]: r["scheme"] for r in rows}["conv2d0"] == "int8"  # the user's word
