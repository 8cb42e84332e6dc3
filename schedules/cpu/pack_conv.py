"""Pre-pack constant conv2d weights by output-channel panels: ``W[o, i, kh, kw] ->
Wp[o // v, i, kh, kw, o % v]``, and rewrite the conv as a TE compute reading the packed weight.

Vectorizing a direct NCHW conv along the output width needs widths that are multiples of
the vector (ResNet's 14 and 7 are not) and contiguous input (stride 2 is not). Along output
channels every conv works: one contiguous vector load of ``v`` packed weights, a broadcast
of one input pixel, ``v`` FMAs. ``Conv2d`` reads ``v`` back from the packed buffer's shape.
Depthwise and grouped convs whose groups are narrower than a vector keep their layout (a
vector along channels would gather the input); ``Conv2d`` vectorizes those along the width.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi
from tvm.target import Target

from tvmcompress.schedules.cpu import common


def pack_np(weight: np.ndarray, width: int) -> np.ndarray:
    """[O, I, KH, KW] -> [O / width, I, KH, KW, width]; ``width`` must divide O."""
    o, i, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(o // width, width, i, kh, kw)
                                .transpose(0, 2, 3, 4, 1))


def unpack_np(packed: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_np``: [O / width, I, KH, KW, width] -> [O, I, KH, KW]."""
    return packed.transpose(0, 4, 1, 2, 3).reshape(-1, *packed.shape[1:4])


def panel_width(out_channels: int, groups: int, target: Target) -> int:
    """Output channels per packed panel (1 = do not pack): two vectors where the register file
    allows both a 6-pixel row of accumulators and the loads, and a whole number of panels per
    group so one vector never straddles two groups."""
    lanes = common.lanes(target, "float32")
    per_group = out_channels // groups
    if per_group % lanes:
        return 1
    return 2 * lanes if per_group % (2 * lanes) == 0 else lanes


def conv_output_size(size, kernel, strides, padding, dilation) -> tuple[int, int]:
    """(out_h, out_w) of a 2-D window op over ``size`` = (h, w); padding is (top, left,
    bottom, right). Shared by the NCHW and NCHWc conv computes."""
    (height, width), (kh, kw), (sh, sw), (dh, dw) = size, kernel, strides, dilation
    top, left, bottom, right = padding
    return ((height + top + bottom - (kh - 1) * dh - 1) // sh + 1,
            (width + left + right - (kw - 1) * dw - 1) // sw + 1)


def padded_window(data: te.Tensor, kernel, strides, padding, dilation):
    """(padded ``data``, out_h, out_w, ry, rx) for a window over axes 2 and 3 (H, W) of an
    NCHW or NCHWc tensor: the prologue every conv compute shares."""
    height, width = int(data.shape[2]), int(data.shape[3])
    top, left, bottom, right = padding
    out_h, out_w = conv_output_size((height, width), kernel, strides, padding, dilation)
    if any(padding):
        rest = [0] * (len(data.shape) - 4)
        data = topi.nn.pad(data, [0, 0, top, left, *rest], [0, 0, bottom, right, *rest],
                           name="pad_temp")
    ry, rx = te.reduce_axis((0, kernel[0]), name="ry"), te.reduce_axis((0, kernel[1]), name="rx")
    return data, out_h, out_w, ry, rx


def packed_conv2d(data: te.Tensor, packed: te.Tensor, strides, padding, dilation,
                  groups: int) -> te.Tensor:
    """NCHW conv2d reading ``packed`` [O / v, I / groups, KH, KW, v]."""
    n = int(data.shape[0])
    panels, in_per_group, kh, kw, v = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    data, out_h, out_w, ry, rx = padded_window(data, (kh, kw), strides, padding, dilation)
    out_per_group = panels * v // groups
    rc = te.reduce_axis((0, in_per_group), name="rc")

    def body(b, o, y, x):
        channel = o // out_per_group * in_per_group + rc
        return te.sum(data[b, channel, y * sh + ry * dh, x * sw + rx * dw]
                      * packed[o // v, rc, ry, rx, o % v], axis=[rc, ry, rx])

    return te.compute((n, panels * v, out_h, out_w), body, name="conv2d_nchw")
