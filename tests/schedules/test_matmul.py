"""Matmul rule: blocked GEMM with fused epilogue; parity against unscheduled TVM on shapes
that are not multiples of the tile (1, primes, odd), batched matmul, and what it refuses."""

from __future__ import annotations

import pytest
import tvm
from onnx import helper as oh
from schedule_helpers import assert_parity, fused, onnx_model, weights

import tvmcompress as tc
from tvmcompress.schedules.cpu import Matmul
from tvmcompress.schedules.cpu.matmul import tile_sizes


def dense(m: int, k: int, n: int, seed: int = 0, act: str = "Relu"):
    """x[m, k] @ W[k, n] + b, then ``act`` (None: the bare matmul)."""
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y0" if act else "y"])]
    if act:
        nodes += [oh.make_node("Add", ["y0", "b"], ["y1"]), oh.make_node(act, ["y1"], ["y"])]
    return onnx_model(nodes, {"x": [m, k]}, ("y", [m, n]),
                      weights(seed, w=(k, n), **({"b": (n,)} if act else {})))


@pytest.mark.parametrize("m, k, n", [(1, 7, 13), (5, 3, 1), (13, 17, 24), (7, 33, 10),
                                     (128, 64, 96), (31, 5, 67), (1, 64, 256)])
def test_dense_bias_relu_parity(m, k, n, host_target):
    """Every shape matches; the rule takes every matmul with a real n axis (n == 1 is a
    GEMV with unit axes normalized away, left to dlight's rules)."""
    compiled = assert_parity(dense(m, k, n))
    if n == 1:
        return
    funcs = [f for gv, f in fused(compiled.ir, host_target).functions.items()
             if "matmul" in gv.name_hint]
    assert funcs and all(Matmul().apply(f, host_target, False) for f in funcs)


@pytest.mark.parametrize("m", [1, 6])
def test_bare_matmul_parity(m):
    """No epilogue: the rule adds its own write-back of the register tile."""
    assert_parity(dense(m, 19, 40, act=None))


def test_batched_activation_matmul_parity():
    """Attention-style: both operands are activations, two batch dims, odd sizes."""
    model = onnx_model([oh.make_node("MatMul", ["a", "b"], ["y0"]),
                        oh.make_node("Tanh", ["y0"], ["y"])],
                       {"a": [2, 3, 5, 7], "b": [2, 3, 7, 11]}, ("y", [2, 3, 5, 11]), {})
    assert_parity(model)


def test_3d_input_with_erf_epilogue_parity():
    """A transformer FFN layer: [batch, seq, d] @ W with an erf epilogue fused into the tile."""
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y0"]), oh.make_node("Erf", ["y0"], ["y"])]
    assert_parity(onnx_model(nodes, {"x": [3, 9, 16]}, ("y", [3, 9, 40]), weights(1, w=(16, 40))))


def test_plain_reduction_is_not_a_matmul(host_target):
    """ReduceSum has the matmul's iteration kinds but one operand: not ours."""
    model = onnx_model([oh.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                       {"x": [4, 32]}, ("y", [4]), {})
    model.graph.initializer.append(oh.make_tensor("axes", 7, [1], [1]))
    mod = fused(tc.load(model).mod, host_target)
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(Matmul().apply(f, host_target, False) is None for f in funcs)


@pytest.mark.parametrize("target, regs", [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, 16),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, 32),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 32)])
@pytest.mark.parametrize("m, n", [(1, 3072), (128, 3072), (7, 10), (16, 192)])
def test_tile_fits_registers(target, regs, m, n):
    """Accumulators, one vector of B per column and one broadcast of A fit the register file;
    lanes and vectors divide n (no predicated tail inside the vector loop)."""
    rows, vecs, lanes = tile_sizes(m, n, tvm.target.Target(target))
    assert rows * vecs + vecs + 1 <= regs
    assert n % (vecs * lanes) == 0
