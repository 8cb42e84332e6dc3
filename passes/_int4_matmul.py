"""The int4 weight-only matmul as CPU kernels want it: weight layout and group-factored TE.

Layout (``cpu_layout``): the weight is cut into panels of ``INT4_PANEL`` output columns, each
panel contiguous ([K/8, PANEL] words, then its scales and offsets), so a kernel streams one
panel instead of striding N bytes per k row (a 4 KiB page per row at N = 4096: the TLB, not
the arithmetic, set the speed). Each uint32 holds 8 consecutive k of one column, nibble t =
row 8r + t, so one vector load brings ``lanes`` columns x 8 k and each k costs a shift, a mask,
a convert and an FMA. 64 columns = 8 AVX2, 4 AVX-512 or 16 NEON vectors of fp32 outputs.

Compute (``grouped_matmul``): the group's scale and offset are factored out of the k loop,
``y = sum_g s[g] * dot_g(x, q) + o[g] * sum_g(x)`` (symmetric: ``s[g] * (dot_g - 8 sum_g(x))``),
so the inner loop touches neither.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

DEQUANT_MATMUL_RULE = "tvmcompress.dequant_matmul"
INT4_GROUP_RULE = "tvmcompress.int4_group_dot"
INT4_PANEL = 64
NIBBLES = 8  # per uint32 word
_F32 = "float32"


def panel_width(n: int) -> int:
    return min(INT4_PANEL, n)


def to_panels(a: np.ndarray, width: int) -> np.ndarray:
    """[R, N] -> [ceil(N / width), R, width], N zero-padded to whole panels."""
    rows, n = a.shape
    count = -(-n // width)
    a = np.pad(a, ((0, 0), (0, count * width - n)))
    return np.ascontiguousarray(a.reshape(rows, count, width).transpose(1, 0, 2))


def words(packed: np.ndarray) -> np.ndarray:
    """Byte-packed nibbles [K/2, N] (row 2i low, 2i+1 high) -> uint32 [K/8, N], nibble t of
    word r = row 8r + t (K a multiple of 8: groups are 32, 64 or 128)."""
    q = np.empty((packed.shape[0] * 2, packed.shape[1]), np.uint32)
    q[0::2], q[1::2] = packed & 15, packed >> 4
    q = q.reshape(-1, NIBBLES, q.shape[1])
    shifts = (np.arange(NIBBLES, dtype=np.uint32) * 4)[None, :, None]
    return np.bitwise_or.reduce(q << shifts, axis=1).astype(np.uint32)


def cpu_layout(arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
    """(packed, scale[, offset]) from ``quantize_groups_int4`` -> the panel layout above."""
    width = panel_width(n)
    return [to_panels(words(arrays[0]), width), *(to_panels(a, width) for a in arrays[1:])]


def grouped_matmul(x: te.Tensor, tensors, k_len: int, n: int, group: int) -> te.Tensor:
    """``x @ dequant(W)`` over ``cpu_layout`` arrays, group-factored (module docstring); the
    per-group dot block and the result are tagged for ``schedules/cpu/int4_matmul.py``."""
    packed, scale = tensors[:2]
    offset = tensors[2] if len(tensors) > 2 else None
    groups, panel = int(scale.shape[1]), int(scale.shape[2])

    def at(t, r, c):
        return t[c // panel, r, c % panel]

    def xv(i, k):
        return x[i, k] if k_len % group == 0 else tirx.if_then_else(k < k_len, x[i, k], 0.0)

    def nibble(k, j):
        word = at(packed, k // NIBBLES, j)
        return ((word >> (k % NIBBLES * 4).astype("uint32")) & tirx.const(15, "uint32")) \
            .astype("int32").astype(_F32)

    kk = te.reduce_axis((0, group), "kk")
    dot = te.compute((x.shape[0], groups, n), lambda i, g, j: te.sum(
        xv(i, g * group + kk) * nibble(g * group + kk, j), axis=kk), name="int4_group_dot",
        attrs={"schedule_rule": INT4_GROUP_RULE})
    ks = te.reduce_axis((0, group), "ks")
    xsum = te.compute((x.shape[0], groups), lambda i, g: te.sum(xv(i, g * group + ks), axis=ks),
                      name="int4_group_xsum")
    r = te.reduce_axis((0, groups), "g")
    if offset is None:
        def body(i, j):
            return te.sum(at(scale, r, j) * (dot[i, r, j] - 8.0 * xsum[i, r]), axis=r)
    else:
        def body(i, j):
            return te.sum(dot[i, r, j] * at(scale, r, j) + xsum[i, r] * at(offset, r, j), axis=r)
    return te.compute((x.shape[0], n), body, name="dequant_matmul",
                      attrs={"schedule_rule": DEQUANT_MATMUL_RULE})
