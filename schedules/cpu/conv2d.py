"""Direct NCHW convolution and pooling for CPUs: register tiles of channels x output columns.

Covers every sliding-window reduction over an NCHW tensor: conv2d (1x1, 3x3, strided,
padded, grouped, depthwise) with its fused bias/BN/ReLU/residual epilogue, and max/avg
pooling. The output is tiled into ``rows`` channels x ``vecs`` vectors along the output width;
per reduction step (ic, kh, kw) that is ``vecs`` input vector loads (contiguous at stride 1)
and ``rows`` weight broadcasts feeding ``rows * vecs`` FMAs. (batch, channel tile, output row,
column tile) run in parallel. A dense conv's padding block is kept apart (inlined, its bounds
test would sit in the inner loop) and scheduled as a parallel copy; NCHWc depthwise convs and
pools, bound by memory, inline theirs.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.target import Target
from tvm_ffi import get_global_func

from tvmcompress.schedules.cpu import common, conv_nchwc

_HAS_IF = get_global_func("s_tir.schedule.HasIfThenElse")


class Conv2d(common.CPURule):
    """``out[n, c, h, w] = reduce_r f(data[.., h*s + .., w*s + ..], weight[c, ..])``."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        infos = normalize_prim_func(sch)
        mains = [i for i, info in enumerate(infos or []) if info.is_reduction()]
        if len(mains) != 1:
            return False
        pos = mains[0]
        pads = [b for b in infos[:pos] if not _try_inline(sch, b.block_rv)]
        if any(not b.is_injective() for b in pads):
            return False
        epilogues = try_inline(sch, infos[pos + 1:])
        if len(epilogues) > 1 or not all(b.is_injective() for b in epilogues):
            return False
        main = infos[pos].block_rv
        extents = common.const_extents(sch, sch.get_loops(main))
        blocked = conv_nchwc.window_kind(sch.get(main))
        panel = _window_kind(sch.get(main)) if blocked is None else -1
        if panel is None or extents is None:
            return False
        epilogue = epilogues[0].block_rv if epilogues else None
        band_pad = None
        if blocked is False:  # depthwise, pooling: memory-bound, a padded copy of the whole
            # map costs more than the bounds tests (2.7x on MobileNetV2's 112x112 maps), one
            # per band of rows less where ``banded`` says so
            if len(pads) == 1 and conv_nchwc.banded(sch, main, pads[0].block_rv):
                band_pad = pads[0].block_rv
            else:
                for pad in pads:
                    sch.compute_inline(pad.block_rv)
            pads = []
        if blocked is not None:
            conv_nchwc.tile(sch, main, epilogue, extents, blocked, target, band_pad)
        elif panel:
            _tile_channels(sch, main, epilogue, extents, panel, target)
        else:
            _tile_width(sch, main, epilogue, extents, target)
        for pad in pads:
            common.parallel_vectorize(sch, pad.block_rv, common.lanes(target, "float32"),
                                      common.num_cores(target))
        return True


def _try_inline(sch: s_tir.Schedule, block) -> bool:
    """Inline a prologue block unless it pads (holds an if_then_else)."""
    if _HAS_IF(sch.get(block)):
        return False
    try:
        sch.compute_inline(block)
    except RuntimeError:
        return False
    return True


def _window_kind(block: tirx.SBlock) -> int | None:
    """None when not an NCHW window reduction; else the packed weight's panel width (0 for
    an unpacked weight or none: pooling, depthwise).

    The 4-D output is indexed [n or 0, c, h, w] by spatial vars; one data operand has w in its
    last index; the weight, if any, uses neither h nor w, and when packed (5-D, see
    ``pack_conv``) has c in its last index. Matmuls never match: they lack c, h and w.
    """
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    (write,) = block.writes
    index = [r.min for r in write.region]
    if len(index) != 4 or len(spatial) < 3:
        return None
    c, h, w = spatial[-3:]
    if not all(e.same_as(v) for e, v in zip(index[1:], (c, h, w), strict=True)):
        return None
    reads = [r for r in block.reads if not r.source.same_as(write.source)]
    data = [r for r in reads if len(r.region) == 4 and w in _vars(r.region[-1:])]
    weights = [r for r in reads if not _vars(r.region) & {h, w}]
    if len(data) != 1 or len(reads) not in (1, 2) or len(data) + len(weights) != len(reads):
        return None
    if weights and len(weights[0].region) == 5:
        packed = weights[0]
        return int(packed.source.ty.shape[-1]) if c in _vars(packed.region[-1:]) else None
    return 0


def _vars(ranges) -> set:
    from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr

    found: set = set()
    for r in ranges:
        found |= collect_vars_used_in_prim_expr(r.min)
    return found


def tile_sizes(channels: int, width: int, target: Target) -> tuple[int, int, int]:
    """Width mode: (channel rows, width vectors, lanes); lanes divide the output width (no
    tail), the accumulators + loads fit the vector registers."""
    regs = common.vector_registers(target)
    lanes = common.lanes_for(width, common.lanes(target, "float32"))
    vecs = common.divisor_at_most(width // lanes, 2 if regs == 16 else 4)
    rows = common.divisor_at_most(channels, max(1, (regs - vecs - 1) // vecs // 2 * 2) or 1)
    return min(rows, 8), vecs, lanes


def _split_spatial(sch: s_tir.Schedule, main):
    loops = sch.get_loops(main)
    kinds = [iv.iter_type for iv in sch.get(main).iter_vars]
    n_spatial = sum(k == tirx.IterVar.DataPar for k in kinds)
    return loops[:n_spatial - 3], loops[n_spatial - 3:n_spatial], loops[n_spatial:]


def _tile_width(sch: s_tir.Schedule, main, epilogue, extents: list[int], target: Target):
    """Vectors along the output width, register rows along channels (unpacked weights)."""
    batch, (c_loop, h_loop, w_loop), reductions = _split_spatial(sch, main)
    rows, vecs, lanes = tile_sizes(extents[len(batch)], extents[len(batch) + 2], target)
    co, ci = sch.split(c_loop, factors=[None, rows])
    wo, wr, wv = sch.split(w_loop, factors=[None, vecs, lanes])
    sch.reorder(*batch, co, h_loop, wo, *reductions, ci, wr, wv)
    outer = sch.fuse(*batch, co, h_loop, wo)
    common.finish_tile(sch, main, epilogue, outer, reductions[0], lanes,
                       macs=math.prod(extents))


def channel_tile(panel: int, width: int, target: Target) -> tuple[int, int, int]:
    """Channels mode: (width rows, channel vectors, lanes). The most accumulators that fit
    (accumulators + weight vectors + one broadcast <= registers) with rows dividing the output
    width, so there is no tail: 7 x 1 vectors for ResNet's 7- and 14-wide maps, 4 x 2 for 56."""
    regs = common.vector_registers(target)
    lanes = common.lanes_for(panel, common.lanes(target, "float32"))
    best = (0, 1, 1)
    for vecs in range(panel // lanes, 0, -1):
        if (panel // lanes) % vecs == 0:
            rows = common.divisor_at_most(width, min(8, (regs - vecs - 1) // vecs))
            best = max(best, (rows * vecs, vecs, rows))
    _, vecs, rows = best
    return rows, vecs, lanes


def _tile_channels(sch: s_tir.Schedule, main, epilogue, extents: list[int], panel: int,
                   target: Target):
    """Vectors along output channels (within one packed panel), register rows along the width:
    per step, ``vecs`` weight loads, ``rows`` input broadcasts, ``rows * vecs`` FMAs. The
    accumulator tile is laid out channels-innermost so each accumulator is one register."""
    batch, (c_loop, h_loop, w_loop), reductions = _split_spatial(sch, main)
    rows, vecs, lanes = channel_tile(panel, extents[len(batch) + 2], target)
    co, cp, cv, cl = sch.split(c_loop, factors=[None, panel // (vecs * lanes), vecs, lanes])
    wo, wi = sch.split(w_loop, factors=[None, rows])
    sch.reorder(*batch, co, cp, h_loop, wo, *reductions, wi, cv, cl)
    outer = sch.fuse(*batch, co, cp, h_loop, wo)
    common.finish_tile(sch, main, epilogue, outer, reductions[0], lanes,
                       tile_layout=lambda n, c, h, w: (n, h, w, c), macs=math.prod(extents))
