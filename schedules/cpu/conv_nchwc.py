"""Register tiles for NCHWc window reductions (``nchwc.py``: conv2d, depthwise, pooling).

The output ``[n, c / b, h, w, b]`` is tiled into ``rows`` output columns x ``vecs`` channel
blocks, one ``b``-lane vector each. Per reduction step a dense conv loads ``vecs`` weight
vectors and broadcasts ``rows`` input pixels into ``rows * vecs`` FMAs; a depthwise conv or a
pool loads ``rows`` input vectors (same lanes, no gather). Rows divide the output width, so
there is no tail and 7- and 14-wide maps vectorize like 56-wide ones; (batch, channel block,
output row, column tile) run in parallel, which gives small maps work for every core.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.target import Target

from tvmcompress.schedules.cpu import common

# Accumulators worth having: 8 hide the FMA latency (4 cycles x 2 pipes on Zen 3 / Skylake);
# up to 12 also amortize each tile's init and epilogue over more FMAs (MobileNetV2's 1x1 convs
# reduce over only 16-24 channels at 112x112 and 56x56: 4 x 3 tiles ran them 15-35% faster
# than 4 x 2).
_TILE_ACCUMULATORS = 12
_MIN_ACCUMULATORS = 8


def window_kind(block: tirx.SBlock) -> bool | None:
    """None unless ``block`` is an NCHWc window reduction (of NCHWc input, or NCHW input for a
    conv whose input channels fill no vector); else whether it is dense (the input read does
    not depend on the output channel, so one broadcast feeds ``vecs`` vectors).
    Unit channel-block or height axes are normalized away (constant indices)."""
    from tvmcompress.schedules.cpu.conv2d import _vars

    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    (write,) = block.writes
    index = [r.min for r in write.region]
    if len(index) != 5 or len(spatial) < 2 or not all(
            isinstance(e, tirx.IntImm) or any(e.same_as(x) for x in spatial) for e in index):
        return None
    c, h, w, v = index[1:]
    if not (w.same_as(spatial[-2]) and v.same_as(spatial[-1])):
        return None
    reads = [r for r in block.reads if not r.source.same_as(write.source)]
    data = [r for r in reads if (len(r.region) == 5 and w in _vars(r.region[-2:-1]))
            or (len(r.region) == 4 and w in _vars(r.region[-1:]))]  # NCHW input, dense
    weights = [r for r in reads if len(r.region) in (5, 6) and not _vars(r.region) & {h, w}]
    if len(data) != 1 or len(reads) not in (1, 2) or len(data) + len(weights) != len(reads):
        return None
    return bool(weights) and not _vars(data[0].region) & {c, v}


def tile_sizes(blocks: int, pixels: int, dense: bool, target: Target) -> tuple[int, int]:
    """(rows, vecs) for ``pixels`` output positions along the width and ``blocks`` channel
    blocks.
    Accumulators + weight vectors + one broadcast fit the registers. Scored by the share of
    cycles in FMAs: enough accumulators for the FMA latency, loads per step (rows broadcasts
    + vecs weight vectors) not above FMAs, and a guarded tail's idle rows. Rows divide the width
    unless no such tile reaches ``_MIN_ACCUMULATORS``: then a tile with a tail may win, if at
    least 3 whole tiles fill each row (14-wide maps: 4 x 3 with a tail of 2 instead of 7 x 1,
    12-18% faster on MobileNetV2's 1x1 convs; on 7-wide maps half the tiles would be tails,
    measured slower). Depthwise and pooling are load-bound whatever the tile: the most rows
    that divide the width."""
    regs = common.vector_registers(target)
    if not dense:
        return common.divisor_at_most(pixels, min(14, regs - 2)), 1
    whole, tailed = [], []
    for vecs in range(1, (4 if regs > 16 else 3) + 1):
        if blocks % vecs:
            continue
        limit = min(12, (regs - vecs - 1) // vecs)
        whole.append(_scored(common.divisor_at_most(pixels, limit), vecs, pixels))
        if pixels // min(limit, pixels) >= 3:
            tailed.append(_scored(min(limit, pixels), vecs, pixels))
    best = max(whole)
    if best[1] < _MIN_ACCUMULATORS and tailed:
        best = max(best, *tailed)
    _, _, rows, vecs = best
    return rows, vecs


def _scored(rows: int, vecs: int, pixels: int) -> tuple[float, int, int, int]:
    acc = rows * vecs
    used = pixels / (-(-pixels // rows) * rows)
    return min(acc, _TILE_ACCUMULATORS) * acc / max(acc, rows + vecs) * used, acc, rows, vecs


def tile(sch: s_tir.Schedule, main, epilogue, extents: list[int], dense: bool,
         target: Target) -> None:
    """Tile ``main`` (loops: batch.., [c], [h], w, v, reductions..; unit c/h normalized away)
    and its epilogue."""
    block = sch.get(main)
    index = [r.min for r in block.writes[0].region]
    loops = sch.get_loops(main)
    by_var = dict(zip((iv.var for iv in block.iter_vars), loops, strict=True))
    size = dict(zip((iv.var for iv in block.iter_vars), extents, strict=True))
    c, h, w, v = (e if isinstance(e, tirx.Var) else None for e in index[1:])
    named = {x for x in (c, h, w, v) if x is not None}
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    batch = [by_var[x] for x in spatial if x not in named]
    reductions = [by_var[iv.var] for iv in block.iter_vars
                  if iv.iter_type != tirx.IterVar.DataPar]
    rows, vecs = tile_sizes(size[c] if c is not None else 1, size[w], dense, target)
    co, cv = sch.split(by_var[c], factors=[None, vecs]) if c is not None else ([], [])
    wo, wi = sch.split(by_var[w], factors=[None, rows])
    outer_loops = [*batch, *_listed(co), *_listed(by_var.get(h)), wo]
    sch.reorder(*outer_loops, *reductions, wi, *_listed(cv), by_var[v])
    if not cv:  # finish_tile expects (rows, vecs, lanes) innermost
        sch.add_unit_loop(by_var[v])
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    common.finish_tile(sch, main, epilogue, outer, reductions[0], size[v],
                       macs=math.prod(extents))


def _listed(loop) -> list:
    return [] if loop is None or loop == [] else [loop]
