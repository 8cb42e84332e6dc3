"""Conv2d rule: direct NCHW conv and pooling; parity against unscheduled TVM across padding,
stride, dilation, groups (depthwise too), 1x1, odd sizes and fused epilogues."""

from __future__ import annotations

import pytest
from onnx import helper as oh
from schedule_helpers import assert_parity, fused, onnx_model, weights

from tvmcompress.schedules.cpu import Conv2d


def conv(n, c, hw, oc, k, stride=1, pad=0, group=1, dilation=1, residual=False, seed=0):
    """Conv(+bias) -> Relu (or + input -> Relu for ``residual``) on an n x c x hw x hw input."""
    out = (hw + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["y0"], kernel_shape=[k, k],
                          strides=[stride] * 2, pads=[pad] * 4, group=group,
                          dilations=[dilation] * 2)]
    if residual:
        nodes.append(oh.make_node("Add", ["y0", "x"], ["y1"]))
    nodes.append(oh.make_node("Relu", ["y1" if residual else "y0"], ["y"]))
    return onnx_model(nodes, {"x": [n, c, hw, hw]}, ("y", [n, oc, out, out]),
                      weights(seed, w=(oc, c // group, k, k), b=(oc,)))


CASES = {
    "3x3_pad_odd": dict(n=1, c=3, hw=9, oc=5, k=3, pad=1),
    "3x3_stride2": dict(n=2, c=4, hw=13, oc=8, k=3, stride=2, pad=1),
    "1x1": dict(n=1, c=16, hw=16, oc=24, k=1),
    "1x1_grouped_residual": dict(n=3, c=8, hw=8, oc=8, k=1, group=4, residual=True),
    "depthwise_prime": dict(n=1, c=6, hw=7, oc=6, k=3, pad=1, group=6),
    "grouped_dilated": dict(n=1, c=4, hw=11, oc=6, k=3, pad=2, group=2, dilation=2),
    "7x7_stem": dict(n=1, c=3, hw=32, oc=16, k=7, stride=2, pad=3),
    # NCHWc (channels multiples of the vector): dense, depthwise, grouped, odd maps
    "nchwc_3x3_7wide": dict(n=1, c=16, hw=7, oc=32, k=3, pad=1),
    "nchwc_1x1_stride2_batch": dict(n=2, c=24, hw=14, oc=8, k=1, stride=2),
    "nchwc_depthwise_stride2": dict(n=1, c=24, hw=15, oc=24, k=3, stride=2, pad=1, group=24),
    "nchwc_depthwise_residual": dict(n=1, c=16, hw=5, oc=16, k=3, pad=1, group=16,
                                     residual=True),
    "nchwc_grouped": dict(n=1, c=32, hw=6, oc=16, k=3, pad=1, group=4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_parity(case, host_target):
    compiled = assert_parity(conv(**CASES[case]))
    funcs = [f for gv, f in fused(compiled.ir, host_target).functions.items()
             if "conv2d" in gv.name_hint]
    assert funcs and all(Conv2d().apply(f, host_target, False) for f in funcs)


@pytest.mark.parametrize("op, attrs, out", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), 9),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 5),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), 4)])
def test_pool_parity(op, attrs, out, host_target):
    model = onnx_model([oh.make_node(op, ["x"], ["y"], **attrs)], {"x": [2, 5, 9, 9]},
                       ("y", [2, 5, out, out]), {})
    compiled = assert_parity(model)
    funcs = [f for gv, f in fused(compiled.ir, host_target).functions.items()
             if "pool" in gv.name_hint]
    assert funcs and all(Conv2d().apply(f, host_target, False) for f in funcs)
