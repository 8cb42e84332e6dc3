"""Winograd F(m x m, 3 x 3) for stride-1 3x3 convs: the transforms compute a correlation
(float64, exact to rounding), convs that qualify become the three Winograd kernels with their
bias/residual/ReLU tail fused after the output transform and match onnxruntime, convs that do
not qualify stay direct NCHWc convs, and the other CPU targets build them scheduled."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper as oh
from schedule_helpers import fused, onnx_model, weights
from tvm import relax

import tvmcompress as tc
from tvmcompress import reference
from tvmcompress.schedules.build import rules_for
from tvmcompress.schedules.cpu import winograd
from tvmcompress.schedules.cpu.pack_conv import conv_output_size
from tvmcompress.targets import resolve_target

# Winograd rounds differently from a direct conv: measured up to ~6e-6 of the output's
# magnitude for F(4x4) over 64 channels (2e-6 for F(2x2)); a wrong transform is off by O(1).
REL_TOL = 2e-5


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_correlation(m):
    """Y = A^T [(G g G^T) * (B^T d B)] A equals the valid 3x3 correlation of an
    (m + 2)^2 tile, and ``transform_weight`` lays its points out row-major."""
    rng = np.random.default_rng(m)
    tile, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    a, b, gm = winograd.matrices(m)
    direct = np.array([[np.sum(tile[y:y + 3, x:x + 3] * g) for x in range(m)]
                       for y in range(m)])
    u = gm @ g @ gm.T
    np.testing.assert_allclose(a.T @ (u * (b.T @ tile @ b)) @ a, direct, atol=1e-12)
    packed = winograd.transform_weight(g.reshape(1, 1, 3, 3), m)
    assert packed.shape == ((m + 2) ** 2, 1, 1)
    np.testing.assert_allclose(packed[:, 0, 0], u.reshape(-1), rtol=1e-6)


def residual_block(c: int, k: int, size: int, pads, batch: int = 1):
    """conv 3x3 (bias) -> ReLU -> conv 3x3 (bias) -> + a 1x1 projection of the input -> ReLU:
    both 3x3 convs stride 1 (the second keeps the first's map size)."""
    top, left, bottom, right = pads
    out = (size + top + bottom - 2, size + left + right - 2)
    nodes = [oh.make_node("Conv", ["x", "w0", "b0"], ["a"], kernel_shape=[3, 3],
                          pads=[top, left, bottom, right]),
             oh.make_node("Relu", ["a"], ["r"]),
             oh.make_node("Conv", ["r", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("Slice", ["x", "zero", "hw", "axes"], ["xs"]),
             oh.make_node("Conv", ["xs", "w2"], ["p"], kernel_shape=[1, 1]),
             oh.make_node("Add", ["c", "p"], ["s"]),
             oh.make_node("Relu", ["s"], ["y"])]
    params = weights(c * k + size, w0=(k, c, 3, 3), b0=(k,), w1=(k, k, 3, 3), b1=(k,),
                     w2=(k, c, 1, 1))
    params |= {"zero": np.array([0, 0], "int64"), "hw": np.array(out, "int64"),
               "axes": np.array([2, 3], "int64")}
    return onnx_model(nodes, {"x": [batch, c, size, size]}, ("y", [batch, k, *out]), params)


def _calls(model, target) -> list[tuple[str, list[int]]]:
    """(kernel, output shape) of each call in the fused module's ``main`` (with repeats)."""
    mod = fused(tc.load(model).mod, target)
    called = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            called.append((expr.args[0].name_hint, [int(d) for d in expr.ty.shape]))

    relax.analysis.post_order_visit(mod["main"], visit)
    return called


def _kernels(model, target) -> list[str]:
    return [name for name, _ in _calls(model, target)]


@pytest.mark.parametrize("c, k, size, pads, batch, m", [
    (32, 32, 28, (1, 1, 1, 1), 1, 4),   # ResNet's 28x28: F(4x4), no tail
    (32, 32, 14, (1, 1, 1, 1), 1, 2),   # 14x14: 16 tiles of 4, 49 of 2: F(2x2), a tail
    (32, 64, 7, (1, 1, 1, 1), 5, 2),    # 7x7 at batch 5: F(2x2) tiles enough, tails
    (64, 32, 26, (0, 1, 1, 0), 1, 4),   # asymmetric padding, 25x25: tails of 1 row, column
])
def test_winograd_conv_matches_onnxruntime(c, k, size, pads, batch, m, host_target):
    """Both 3x3 convs of a residual block run as Winograd kernels; the second one's bias,
    residual add and ReLU fuse into its output transform; outputs match onnxruntime."""
    model = residual_block(c, k, size, pads, batch)
    kernels = _kernels(model, host_target)
    assert sum(n.startswith(winograd.INPUT) for n in kernels) == 2
    assert sum(n.startswith("winograd_gemm") for n in kernels) == 2
    outputs = [n for n in kernels if winograd.OUTPUT in n]
    assert len(outputs) == 2 and any(n.count("add") == 2 and "relu" in n for n in outputs)
    assert sum("conv2d_nchwc" in n for n in kernels) == 1  # the 1x1 projection only
    points = {shape[0] for name, shape in _calls(model, host_target)
              if name.startswith("winograd_gemm")}
    assert points == {(m + 2) ** 2}

    compiled = tc.compile(model)
    assert compiled.build_info.unscheduled == []
    x = np.random.default_rng(1).standard_normal((batch, c, size, size)).astype("float32")
    expected = reference.ort_run(model, {"x": x})["y"]
    actual = compiled.run({"x": x})["y"]
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= REL_TOL * np.abs(expected).max()


def _single_conv(c: int, k: int, size: int, **attrs):
    node = oh.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)
    groups = attrs.get("group", 1)
    stride, dilation = attrs.get("strides", [1])[0], attrs.get("dilations", [1])[0]
    pad = attrs.get("pads", [0])[0]
    out, _ = conv_output_size((size, size), (3, 3), (stride, stride), (pad,) * 4,
                              (dilation, dilation))
    return onnx_model([node], {"x": [1, c, size, size]}, ("y", [1, k, out, out]),
                      weights(0, w=(k, c // groups, 3, 3)))


@pytest.mark.parametrize("c, k, size, attrs", [
    (32, 32, 28, {"strides": [2, 2], "pads": [1] * 4}),    # strided
    (32, 32, 28, {"dilations": [2, 2], "pads": [2] * 4}),  # dilated
    (32, 32, 28, {"group": 2, "pads": [1] * 4}),           # grouped
    (16, 16, 28, {"pads": [1] * 4}),                       # too few channels to gain
    (32, 32, 6, {"pads": [1] * 4}),                        # too few tiles to gain
    (32, 32, 7, {"pads": [1] * 4}),                        # 16 tiles at batch 1: weight-bound
])
def test_other_convs_stay_direct(c, k, size, attrs, host_target):
    kernels = _kernels(_single_conv(c, k, size, **attrs), host_target)
    assert not any("winograd" in n for n in kernels)
    assert any("conv2d_nchwc" in n for n in kernels)


@pytest.mark.parametrize("preset", ["x86-64-avx512", "raspberry-pi-5"])
def test_other_cpu_targets_schedule_winograd(preset):
    """NCHW16c (AVX-512) and NCHW4c (NEON) builds: the three kernels exist and our rules
    schedule every kernel (compile only: they run on their hardware)."""
    model = residual_block(32, 32, 28, (1, 1, 1, 1))
    compiled = tc.compile(model, target=preset)
    assert compiled.build_info.unscheduled == []
    target = resolve_target(preset).tvm_target
    mod = fused(compiled.ir, target)
    for gv, func in mod.functions_items():
        if "winograd" in gv.name_hint:
            rule = next(r for r in rules_for(target) if r.apply(func, target, False))
            assert type(rule).__name__ == ("Matmul" if "gemm" in gv.name_hint else "Winograd")
