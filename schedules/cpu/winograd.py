"""Winograd F(m x m, 3 x 3) for stride-1 3x3 convolutions in NCHWc.

A direct 3x3 conv costs 9 multiply-adds per output and input channel; Winograd computes an
``m x m`` output tile from an ``(m + 2) x (m + 2)`` input tile with ``(m + 2)^2`` of them
(F(2x2, 3x3): 2.25x fewer, F(4x4, 3x3): 4x fewer), at the price of transforms on each side:

1. ``winograd_input``: ``V[e, p, c] = (B^T d_p B)[e]`` for every input tile ``p`` (element-wise
   sums of a few input vectors: memory-bound, one pass over the input);
2. ``winograd_gemm``: ``M[e, p, k] = sum_c V[e, p, c] U[e, c, k]``: one GEMM per transform point
   ``e``, with ``U = G g G^T`` the weights transformed at compile time. Scheduled by ``Matmul``
   (register tiles, packed panels): nearly all the work, at the GEMM's FMA rate;
3. ``winograd_output``: ``Y = A^T M_p A`` per output tile, written NCHWc, with the conv's
   element-wise tail (bias, residual, ReLU) fused after it.

The transforms are exact in real arithmetic; in float32 the result differs from a direct conv
by rounding: measured up to ~3e-6 (F(2x2)) and ~6e-6 (F(4x4)) of the output's magnitude over
64-512 channels, with the interpolation points of Barabasz et al., 2018 (TVM's
``winograd_util``).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax, s_tir, te, tirx, topi
from tvm.ir.expr import Constant
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.target import Target
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.cpu.matmul import tile_sizes
from tvmcompress.schedules.cpu.pack_conv import conv_output_size, unpack_np

INPUT, OUTPUT = "winograd_input", "winograd_output"


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G) of F(m, 3), float64: ``y = A^T [(G g) * (B^T d)]``."""
    return _cook_toom_convolution(_interpolation_points(m + 1), m, 3)


def transform_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """OIHW 3x3 weights -> ``U[(m + 2)^2, I, O]`` = G g G^T, float32 (compile time, float64
    arithmetic)."""
    _, _, g = matrices(m)
    alpha = m + 2
    u = np.einsum("ay,oiyx,bx->abio", g, weight.astype(np.float64), g, optimize=True)
    return np.ascontiguousarray(u.reshape(alpha * alpha, *u.shape[2:]).astype(np.float32))


def _coef(matrix: np.ndarray, row, col) -> tirx.PrimExpr:
    """``matrix[row, col]`` for index expressions: a select chain that folds to a constant once
    the loops over ``row`` and ``col`` are unrolled."""
    value = tirx.const(0.0, "float32")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j] != 0:
                value = tirx.Select(tirx.all(row == i, col == j),
                                    tirx.const(float(matrix[i, j]), "float32"), value)
    return value


def tiles(out_h: int, out_w: int, m: int) -> tuple[int, int]:
    return -(-out_h // m), -(-out_w // m)


def _output_size(height: int, width: int, padding) -> tuple[int, int]:
    return conv_output_size((height, width), (3, 3), (1, 1), padding, (1, 1))


def input_transform(data: te.Tensor, m: int, padding, rows: int = 1) -> te.Tensor:
    """``V[e, p, c]`` of NCHWc ``data`` ``[N, C / b, H, W, b]``: e = (row, column) of the
    transform point, p = (n, tile row, tile column), c = input channel. The tile count is
    rounded up to a multiple of ``rows`` (the GEMM's register tile: no guarded tail there);
    the extra rows repeat the last tile and are never read back."""
    n, blocks, height, width, b = (int(d) for d in data.shape)
    top, left, _, _ = padding
    out_h, out_w = _output_size(height, width, padding)
    th, tw = tiles(out_h, out_w, m)
    alpha = m + 2
    _, bmat, _ = matrices(m)
    padded = topi.nn.pad(data, [0, 0, top, left, 0],  # to whole tiles
                         [0, 0, th * m + 2 - top - height, tw * m + 2 - left - width, 0],
                         name="winograd_pad")
    ri = te.reduce_axis((0, alpha), name="ri")

    count = n * th * tw
    padded_count = -(-count // rows) * rows

    def half_rows(xi, j, p, c):  # (B^T d) per tile: first half of the two-sided transform
        p = tirx.min(p, count - 1)
        bi, rest = p // (th * tw), p % (th * tw)
        ty, tx = rest // tw, rest % tw
        return te.sum(padded[bi, c // b, ty * m + ri, tx * m + j, c % b]
                      * _coef(bmat, ri, xi), axis=ri)

    half = te.compute((alpha, alpha, padded_count, blocks * b), half_rows, name=INPUT + "_rows")
    rj = te.reduce_axis((0, alpha), name="rj")

    def body(e, p, c):
        return te.sum(half[e // alpha, rj, p, c] * _coef(bmat, rj, e % alpha), axis=rj)

    return te.compute((alpha * alpha, padded_count, blocks * b), body, name=INPUT)


def batched_gemm(v: te.Tensor, u: te.Tensor) -> te.Tensor:
    """``M[e, p, k] = sum_c V[e, p, c] U[e, c, k]`` (``Matmul`` schedules it)."""
    points, tiles_, channels = (int(d) for d in v.shape)
    rc = te.reduce_axis((0, channels), name="rc")
    return te.compute((points, tiles_, int(u.shape[2])),
                      lambda e, p, k: te.sum(v[e, p, rc] * u[e, rc, k], axis=rc),
                      name="winograd_gemm")


def output_transform(mm: te.Tensor, m: int, n: int, out_h: int, out_w: int,
                     b: int) -> te.Tensor:
    """NCHWc ``Y[n, k / b, y, x, k % b]`` from the GEMM's ``M``."""
    channels = int(mm.shape[2])
    alpha = m + 2
    th, tw = tiles(out_h, out_w, m)
    amat, _, _ = matrices(m)
    ri = te.reduce_axis((0, alpha), name="ri")
    rj = te.reduce_axis((0, alpha), name="rj")

    def body(bi, kb, y, x, v):
        p = (bi * th + y // m) * tw + x // m
        return te.sum(mm[ri * alpha + rj, p, kb * b + v]
                      * _coef(amat, ri, y % m) * _coef(amat, rj, x % m), axis=[ri, rj])

    return te.compute((n, channels // b, out_h, out_w, b), body, name=OUTPUT)


# Below this many tiles the GEMM is bound by reading its weights, which Winograd enlarges
# (16/9 for F(2x2), 4x for F(4x4)): ResNet-18's 7x7 convs at batch 1 (16 tiles of F(2x2)) ran
# only 1.2x faster than direct ones for 1.8x their weight bytes, and its 14x14 convs gained
# little from F(4x4) (16 tiles) over F(2x2) (49 tiles) for 2.25x the weight bytes again.
MIN_TILES = 32
MIN_CHANNELS = 32  # narrower GEMMs are short of reduction and of output vectors


def tile_for(batch: int, out_h: int, out_w: int, in_channels: int,
             out_channels: int) -> int | None:
    """The output tile ``m`` worth using, None for a direct conv: the largest of F(4x4) and
    F(2x2) with ``MIN_TILES`` tiles in the batch (F(4x4) on ResNet-18's 56 and 28 maps: about
    2x a direct conv here; F(2x2) on its 14 map; its 7 map stays direct at batch 1)."""
    if min(in_channels, out_channels) < MIN_CHANNELS:
        return None
    for m in (4, 2):
        th, tw = tiles(out_h, out_w, m)
        if batch * th * tw >= MIN_TILES:
            return m
    return None


def rewrite(builder: relax.BlockBuilder, conv: relax.Call, target: Target
            ) -> relax.Expr | None:
    """An NCHWc float32 3x3 stride-1 conv with a constant weight (``[O / b, I, 3, 3, b]``,
    see ``nchwc.py``) as the three Winograd kernels, or None when it is not one or too small
    to gain."""
    attrs, (data, weight) = conv.attrs, conv.args
    shape = common.static_shape(data)
    if not isinstance(weight, Constant) or shape is None or len(shape) != 5 \
            or str(data.ty.dtype) != "float32" or str(weight.ty.dtype) != "float32" \
            or int(attrs.groups) != 1 or any(int(s) != 1 for s in attrs.strides) \
            or any(int(d) != 1 for d in attrs.dilation) \
            or tuple(weight.value.shape[2:4]) != (3, 3) or len(weight.value.shape) != 5:
        return None
    n, _, height, width, b = shape
    padding = tuple(int(p) for p in attrs.padding)
    out_h, out_w = _output_size(height, width, padding)
    oihw = unpack_np(weight.value.numpy())
    m = tile_for(n, out_h, out_w, oihw.shape[1], oihw.shape[0])
    if m is None or oihw.shape[0] % b:
        return None
    th, tw = tiles(out_h, out_w, m)
    rows, _, _ = tile_sizes(n * th * tw, oihw.shape[0], target)
    v = builder.emit(builder.call_te(input_transform, data, m, padding, rows,
                                     primfunc_name_hint=INPUT))
    mm = builder.emit(builder.call_te(batched_gemm, v, relax.const(transform_weight(oihw, m)),
                                      primfunc_name_hint="winograd_gemm"))
    return builder.call_te(output_transform, mm, m, n, out_h, out_w, b,
                           primfunc_name_hint=OUTPUT)


class Winograd(common.CPURule):
    """The two transform kernels (found by their block names; the GEMM between them is an
    ordinary batched matmul)."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        infos = normalize_prim_func(sch)
        names = [sch.get(info.block_rv).name_hint for info in infos or []]
        if names[-1:] == [INPUT] and len(infos) == 3:
            _schedule_input(sch, infos[2].block_rv, target)
            return True
        if OUTPUT not in names or names.index(OUTPUT) != 0:
            return False
        epilogues = try_inline(sch, infos[1:])
        if len(epilogues) > 1 or not all(b.is_injective() for b in epilogues):
            return False
        _schedule_output(sch, infos[0].block_rv, epilogues[0].block_rv if epilogues else None,
                         target)
        return True


def _schedule_input(sch: s_tir.Schedule, block, target: Target) -> None:
    """Per (tile, channel vector): the ``(m + 2)^2`` input vectors are loaded once and every
    transform point is a sum of a few of them (coefficients fold after unrolling)."""
    b = common.lanes(target, "float32")
    half = sch.get_producers(block)[0]
    pad = sch.get_producers(half)[0]
    common.parallel_vectorize(sch, pad, b, common.num_cores(target))
    e, p, c, rj = sch.get_loops(block)
    alpha = math.isqrt(int(sch.get(e).extent))
    cb, cl = sch.split(c, factors=[None, b])
    xi, nu = sch.split(e, factors=[alpha, alpha])
    sch.reorder(p, cb, xi, nu, rj, cl)
    outer = sch.fuse(p, cb)
    write = common.tile_accumulator(sch, block, None, outer)
    sch.compute_at(half, xi)
    sch.set_scope(half, 0, "global")
    hj, hc, hr = sch.get_loops(half)[-3:]
    sch.reorder(hj, hr, hc)
    sch.vectorize(hc)
    sch.unroll(hj)
    sch.unroll(hr)
    sch.decompose_reduction(half, hr)
    sch.vectorize(cl)
    for loop in (xi, nu, rj):
        sch.unroll(loop)
    sch.decompose_reduction(block, rj)
    common.vectorize_inner(sch, sch.get_loops(write)[1:], b)


def _schedule_output(sch: s_tir.Schedule, block, epilogue, target: Target) -> None:
    """Per (tile, channel block): ``m x m`` accumulator vectors, the element-wise tail per
    tile from them."""
    *batch, kb, y, x, v, ri, rj = sch.get_loops(block)
    m = int(sch.get(ri).extent) - 2
    ty, yi = sch.split(y, factors=[None, m])
    tx, xi = sch.split(x, factors=[None, m])
    sch.reorder(*batch, ty, tx, kb, ri, rj, yi, xi, v)
    outer = sch.fuse(*batch, ty, tx, kb)
    epilogue = common.tile_accumulator(sch, block, epilogue, outer)
    sch.vectorize(v)
    for loop in (ri, rj, yi, xi):
        sch.unroll(loop)
    sch.decompose_reduction(block, ri)
    common.vectorize_inner(sch, sch.get_loops(epilogue)[1:], int(sch.get(v).extent))
