"""Row reductions (schedules/cpu/reduction.py): abs-max (int8-dynamic scales), softmax with
torch's isnan/where tail, layer_norm, row sums and full reductions get one row loop with
vectorized partial reductions and row-sized temporaries, and match numpy."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tvm
from schedule_helpers import fused, run, unscheduled_build
from tvm import relax, te

from tvmcompress.schedules import build
from tvmcompress.schedules.cpu.reduction import RowReduction
from tvmcompress.targets import resolve_target

# Lane counts below are AVX2's: pinned, so an AVX-512 host checks the same code.
HOST = resolve_target("x86-64-avx2")


def _module(shapes: dict[str, tuple], body) -> tvm.IRModule:
    """A Relax ``main`` over float32 inputs of ``shapes``, returning ``body(*vars)``."""
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in shapes.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(*params))
        bb.emit_func_output(out)
    return bb.get()


def _build(mod: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    executable, info = build(mod, HOST)
    assert info.unscheduled == []
    return run(executable, inputs)


def _ours(mod: tvm.IRModule) -> tvm.tirx.PrimFunc:
    """The one fused kernel our rule schedules, as it schedules it."""
    target = HOST.tvm_target
    with target:
        scheds = [RowReduction().apply(f, target, False) for f in fused(mod, target).functions
                  .values() if isinstance(f, tvm.tirx.PrimFunc)]
    (sch,) = [s for s in scheds if s is not None]
    return sch.mod["main"]


def _largest_temporary(func: tvm.tirx.PrimFunc) -> int:
    """Elements of the largest buffer the lowered kernel allocates (TVM moves a buffer used
    only under the row loop into it and shrinks it to what one row touches)."""
    s = tvm.s_tir.transform
    lower = tvm.transform.Sequential([
        s.LowerInitBlock(), s.PlanAndUpdateBufferAllocationLocation(),
        s.ConvertBlocksToOpaque(), s.CompactBufferAllocation(), s.LowerOpaqueBlock()])
    text = lower(tvm.IRModule({"main": func}))["main"].script()
    shapes = re.findall(r"T\.alloc_buffer\(\(([^)]*)\)", text)
    return max((math.prod(int(n) for n in re.findall(r"int64\((\d+)\)", s)) for s in shapes),
               default=0)


def _abs_max(shape, axis):
    return _module({"x": shape}, lambda x: relax.op.max(relax.op.abs(x), axis=axis,
                                                         keepdims=axis is not None))


@pytest.mark.parametrize("shape", [(64, 384), (2, 64, 384), (32, 100)])
def test_abs_max_rows_are_vectorized_and_exact(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mod = _abs_max(shape, [-1])
    np.testing.assert_array_equal(_build(mod, [x]), np.abs(x).max(-1, keepdims=True))
    text = _ours(mod).script()
    lanes = 16 if shape[-1] % 16 == 0 else 4  # 100 = 25 x 4: the widest dividing width
    assert f"T.vectorized(T.int64({lanes}))" in text and "_rf" in text
    assert ("T.parallel" in text) == (math.prod(shape) >= 1 << 17)  # small ones: one thread


def test_full_reduction_is_vectorized_and_exact():
    """Per-tensor int8-dynamic scales: max(abs(x)) over the whole tensor (no row axis)."""
    x = np.random.default_rng(1).standard_normal((64, 96)).astype(np.float32)
    mod = _abs_max((64, 96), None)
    np.testing.assert_array_equal(_build(mod, [x]), np.abs(x).max())
    text = _ours(mod).script()
    assert "T.vectorized(T.int64(16))" in text and "T.parallel" not in text


def test_row_sums_within_float_tolerance():
    x = np.random.default_rng(2).standard_normal((8, 48, 384)).astype(np.float32)
    mod = _module({"x": x.shape}, lambda v: relax.op.sum(v, axis=[-1]))
    np.testing.assert_allclose(_build(mod, [x]), x.astype(np.float64).sum(-1),
                               rtol=1e-6, atol=1e-6 * np.abs(x).sum(-1).max())
    assert "T.parallel" in _ours(mod).script()


def _softmax_where(x):
    s = relax.op.nn.softmax(x, axis=-1)
    return relax.op.where(relax.op.isnan(s), relax.const(0.0, "float32"), s)


def test_softmax_with_isnan_where_tail_and_masked_rows():
    """Scores with fully masked rows (all -inf): the NaN of 0/0 is replaced by the where, as
    in TVM's unscheduled build; one parallel row loop, every stage in vectors (isnan kept the
    division scalar), temporaries one row long."""
    shape = (1, 12, 64, 128)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 4
    x[0, 1, 5, :] = -np.inf
    x[0, 7, :3, :] = -np.inf
    mod = _module({"x": shape}, _softmax_where)
    executable, info = build(mod, HOST)
    assert info.unscheduled == [] and any("softmax" in k for k in info.flops)
    out = run(executable, [x])
    with np.errstate(invalid="ignore"):  # -inf - -inf in the masked rows
        e = np.exp(x - x.max(-1, keepdims=True))
        expected = np.nan_to_num(e / e.sum(-1, keepdims=True), nan=0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[0, 1, 5], 0.0)
    before = run(unscheduled_build(mod, HOST.tvm_target), [x])
    np.testing.assert_allclose(out, before, rtol=1e-6, atol=1e-7)
    func = _ours(mod)
    assert "T.parallel(T.int64(768))" in func.script()
    assert _largest_temporary(func) <= shape[-1]
    source = executable.mod.imports[0].inspect_source("ll")
    assert "fdiv <8 x float>" in source and not re.search(r"fdiv float", source)
    # a 128-float row fits the stack: no workspace allocation per row inside the threads
    assert "TVMBackendAllocWorkspace" not in executable.mod.imports[0].inspect_source("asm")


def test_layer_norm_matches_numpy_with_row_temporaries():
    rng = np.random.default_rng(4)
    x, g, b = (rng.standard_normal(s).astype(np.float32) for s in [(2, 64, 384), 384, 384])
    mod = _module({"x": x.shape, "g": g.shape, "b": b.shape},
                  lambda v, gv, bv: relax.op.nn.layer_norm(v, gv, bv, axes=[-1]))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(_build(mod, [x, g, b]), (x - mean) / np.sqrt(var + 1e-5) * g + b,
                               rtol=1e-5, atol=1e-5)
    func = _ours(mod)
    assert "T.parallel(T.int64(128))" in func.script()
    assert _largest_temporary(func) <= 16  # the per-lane partial sums; mean/var are scalars


def _prim_func(n, k, gemv: bool) -> tvm.tirx.PrimFunc:
    a = te.placeholder((n, k), "float32", "a")
    w = te.placeholder((k,), "float32", "w")
    r = te.reduce_axis((0, k), "r")
    y = te.compute((n,), lambda i: te.sum(a[i, r] * w[r] if gemv else a[i, r], axis=r))
    return te.create_prim_func([a, w, y] if gemv else [a, y])


def test_symbolic_rows_and_gemv_are_left_to_other_rules():
    target = HOST.tvm_target
    rule = RowReduction()
    with target:
        assert rule.apply(_prim_func(64, 128, gemv=False), target, False) is not None
        assert rule.apply(_prim_func(tvm.tirx.Var("n", "int64"), 128, False), target,
                          False) is None
        assert rule.apply(_prim_func(64, 128, gemv=True), target, False) is None
