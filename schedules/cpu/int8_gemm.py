"""Tensorized int8 GEMM and direct conv for AVX2 CPUs (the kernels ``int8_pack.py`` emits).

Register tile: ``rows`` output rows (GEMM rows, or output pixels along the width of a conv)
x ``vecs`` vectors of 8 output channels, int32 accumulators in registers. Per reduction step
(``r`` values of k; conv: of input channels, at one (kh, kw)) the tile is ``vecs`` contiguous
loads of a packed weight block, ``rows`` broadcasts of ``r`` activation bytes and ``rows*vecs``
intrinsic calls (``schedules/intrin/x86_int8.py``). Channel panels outside, rows inside (the
panel's weights stay in cache), fused and parallel. The int32 -> float requantize / bias /
activation epilogue that FuseOps attached is computed per tile from the registers.
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.cpu.int8_pack import RULE
from tvmcompress.schedules.intrin import x86_int8
from tvmcompress.schedules.intrin.arm_int8 import DOT_SDOT
from tvmcompress.schedules.intrin.x86_int8 import DOT_AVX512, DOT_S16, DOT_U8S8, DOT_VNNI


def tile(rows: int, panels: int, intrin: str) -> tuple[int, int]:
    """(rows, vectors) of the register tile: ``rows * vecs`` accumulators, ``vecs`` weight
    vectors and one broadcast fit AVX2's 16 ymm registers (the u8 path needs two more: the
    ones vector and the int16 pair sums). A single row gets up to 8 vectors (a GEMV is bound
    by the latency of its dependent adds, so it wants many independent accumulators)."""
    if rows == 1:
        return 1, common.divisor_at_most(panels, 8)
    spare = 16 - (1 if intrin == DOT_S16 else 3)
    shapes = []
    for vecs in (d for d in range(1, min(panels, 4) + 1) if panels % d == 0):
        r = common.divisor_at_most(rows, max(1, (spare - vecs) // vecs))
        shapes.append((r, vecs))
    # Most accumulators, then fewest loads per step (r broadcasts + vecs weight vectors):
    # 8x1 and 2x4 both hold 8 accumulators, but 2x4 loads 6 registers per 8 products, not 9.
    return min(shapes, key=lambda s: (-s[0] * s[1], s[0] + s[1], -s[1]))


class Int8Gemm(common.CPURule):
    """The packed int8 GEMM / conv blocks (tagged ``schedule_rule``) and their epilogue."""

    def tile(self, sch: s_tir.Schedule, rows: int, panels: int, intrin: str):
        """(rows, vectors) of the register tile; ``schedules/spaces.py`` samples them."""
        return tile(rows, panels, intrin)

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        tagged = [i for i, b in enumerate(blocks)
                  if sch.get(b).annotations.get("schedule_rule") == RULE]
        if len(tagged) != 1:
            return False
        for block in blocks[:tagged[0]]:  # element-wise producers of the epilogue's other
            sch.compute_inline(block)     # operand (a dequantized residual): read in place
        main, others = blocks[tagged[0]], blocks[tagged[0] + 1:]
        for block in others[:-1]:  # the elementwise epilogue chain, inlined into its last block
            sch.compute_inline(block)
        epilogue = others[-1] if others else None
        wp = sch.get(main).reads[1].source
        lanes = int(wp.shape[-2])
        intrin = _intrin(str(wp.dtype), lanes, target)
        loops = sch.get_loops(main)  # not normalized: unit loops are still there
        extents = common.const_extents(sch, loops)
        if extents is None:
            return False
        kind = sch.get(main).name_hint
        if kind == "int8_gemm":  # gemm: batch.., m, n, ko, ki
            # Rows tile the last row axis only: a tile split across a fused (batch, m) axis
            # has bindings tensorize cannot blockize ([8, 128, K] activations fell back to
            # scalar code); the batch axes join the parallel outer loop instead.
            *batch, m, n, ko, ki = loops
            rows, vecs = self.tile(sch, extents[-4], extents[-3] // lanes, intrin)
            mo, mi = sch.split(m, [None, rows])
            no, nr, ni = sch.split(n, [None, vecs, lanes])
            sch.reorder(no, *batch, mo, ko, mi, nr, ni, ki)
            outer, first = sch.fuse(no, *batch, mo), ko
        elif kind == "int8_conv_nchwc":  # b, o / lanes, h, w, lane, c, kh, kw, ki
            b, o, h, w, oi, c, kh, kw, ki = loops
            rows, vecs = self.tile(sch, extents[3], extents[1], intrin)
            wo, wi = sch.split(w, [None, rows])
            oo, orr = sch.split(o, [None, vecs])
            sch.reorder(b, oo, h, wo, c, kh, kw, wi, orr, oi, ki)
            outer, first, mi, nr, ni = sch.fuse(b, oo, h, wo), c, wi, orr, oi
        else:  # conv writing NCHW: b, o, h, w, c, kh, kw, ki
            b, o, h, w, c, kh, kw, ki = loops
            rows, vecs = self.tile(sch, extents[3], extents[1] // lanes, intrin)
            wo, wi = sch.split(w, [None, rows])
            oo, orr, oi = sch.split(o, [None, vecs, lanes])
            sch.reorder(b, oo, h, wo, c, kh, kw, wi, orr, oi, ki)
            outer, first, mi, nr, ni = sch.fuse(b, oo, h, wo), c, wi, orr, oi
        _finish(sch, main, epilogue, outer, first, (mi, nr, ni), intrin, math.prod(extents),
                _CHANNELS_LAST if kind == "int8_conv" else None)
        return True


def _intrin(b_dtype: str, lanes: int, target: Target) -> str:
    """The intrinsic the packer chose, read back from the packed weight's type and lanes."""
    from tvm.target import codegen

    if lanes == 4:
        return DOT_SDOT
    if lanes == 16:
        return DOT_VNNI if codegen.target_has_features("avx512vnni", target) else DOT_AVX512
    return DOT_U8S8 if b_dtype == "int8" else DOT_S16


def _CHANNELS_LAST(b, o, h, w):  # an index map: the accumulator tile as [.., w, o]
    return (b, h, w, o)


def _finish(sch, main, epilogue, outer, first, inner, intrin: str, macs: int,
            layout=None) -> None:
    """Accumulators in registers (``layout``: the conv tile's channels made innermost, so an
    intrinsic writes 8 contiguous lanes), epilogue per tile, parallel outer loop, tensorized
    core."""
    epilogue = common.tile_accumulator(sch, main, epilogue, outer, layout, macs)
    init = sch.decompose_reduction(main, first)
    mi, nr, ni = inner
    scope = sch.get(main).writes[0].source.scope()  # tile_accumulator picks it
    sch.tensorize(ni, x86_int8.name(intrin, scope))
    sch.unroll(nr)
    sch.unroll(mi)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    common.vectorize_inner(sch, sch.get_loops(epilogue)[1:], 8)
