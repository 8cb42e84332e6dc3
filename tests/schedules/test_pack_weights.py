"""Weight pre-packing: the numpy packing is a pure relayout, the Relax rewrite replaces
constant-weight matmuls/convs by packed TE computes on CPUs only, and leaves others alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper as oh
from schedule_helpers import onnx_model, weights

import tvmcompress as tc
from tvmcompress.schedules.build import layout_passes
from tvmcompress.schedules.cpu import pack_conv, pack_weights
from tvmcompress.targets import resolve_target


def test_pack_np_is_a_relayout():
    w = np.arange(6 * 16, dtype="float32").reshape(6, 16)
    packed = pack_weights.pack_np(w, 8)
    assert packed.shape == (2, 6, 8)
    k, n = 5, 11
    assert packed[n // 8, k, n % 8] == w[k, n]
    conv = np.arange(16 * 3 * 2 * 2, dtype="float32").reshape(16, 3, 2, 2)
    pc = pack_conv.pack_np(conv, 8)
    assert pc.shape == (2, 3, 2, 2, 8)
    assert pc[13 // 8, 2, 1, 0, 13 % 8] == conv[13, 2, 1, 0]


def _ops(mod: tvm.IRModule) -> str:
    return mod["main"].script()


def _model(kind: str, channels: int = 16, group: int = 1):
    if kind == "matmul":
        return onnx_model([oh.make_node("MatMul", ["x", "w"], ["y"])], {"x": [4, 8]},
                          ("y", [4, channels]), weights(0, w=(8, channels)))
    return onnx_model([oh.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3],
                                    group=group)],
                      {"x": [1, 8, 6, 6]}, ("y", [1, channels, 4, 4]),
                      weights(0, w=(channels, 8 // group, 3, 3)))


@pytest.mark.parametrize("kind, op, packed", [("matmul", "R.matmul", "matmul_packed"),
                                              ("conv", "R.nn.conv2d", "conv2d_nchwc")])
def test_constant_weights_are_packed_on_cpu(kind, op, packed):
    mod = tc.load(_model(kind)).mod
    target = resolve_target("x86-64-avx2").tvm_target  # 8 channels fill its blocks
    after = tvm.transform.Sequential(layout_passes(target))(mod)
    assert op in _ops(mod) and op not in _ops(after)
    assert packed in [gv.name_hint for gv in after.functions]


@pytest.mark.parametrize("preset, kind, channels, group", [
    ("cuda-sm86", "matmul", 16, 1),   # GPU: dlight's rules want the native layout
    ("x86-64-avx2", "conv", 4, 4),    # 1 channel per group: vectors would gather the input
    ("x86-64-avx2", "conv", 12, 1)])         # 12 output channels: no whole 8-lane vector
def test_ineligible_stays_unchanged(preset, kind, channels, group):
    mod = tc.load(_model(kind, channels, group)).mod
    after = tvm.transform.Sequential(layout_passes(resolve_target(preset).tvm_target))(mod)
    tvm.ir.assert_structural_equal(after, mod)
