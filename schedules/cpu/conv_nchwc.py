"""Register tiles for NCHWc window reductions (``nchwc.py``: conv2d, depthwise, pooling).

The output ``[n, c / b, h, w, b]`` is tiled into ``rows`` output columns x ``vecs`` channel
blocks, one ``b``-lane vector each. Per reduction step a dense conv loads ``vecs`` weight
vectors and broadcasts ``rows`` input pixels into ``rows * vecs`` FMAs; a depthwise conv or a
pool loads ``rows`` input vectors (same lanes, no gather). Rows divide the output width, so
there is no tail and 7- and 14-wide maps vectorize like 56-wide ones; (batch, channel block,
output row, column tile) run in parallel, which gives small maps work for every core.
A dense conv tiles a whole map's pixels as one row (``_flatten_pixels``); a stride-1
depthwise conv or pool copies each band of padded rows before its tiles (``banded``).
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
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
    """(rows, vecs) for ``pixels`` output positions along the width (a dense conv's whole
    map, see ``_flatten_pixels``) and ``blocks`` channel blocks.
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
         target: Target, pad=None) -> None:
    """Tile ``main`` (loops: batch.., [c], [h], w, v, reductions..; unit c/h normalized away)
    and its epilogue. A depthwise conv or pool given its padding block ``pad`` reads a padded
    copy of each band of rows (``banded``); a dense conv tiles its pixels as one axis
    (``_flatten_pixels``)."""
    if epilogue is None:
        epilogue = sch.cache_write(main, 0, "global")
    if dense and _flatten_pixels(sch, main, epilogue):
        extents = common.const_extents(sch, sch.get_loops(main))
    block = sch.get(main)
    index = [r.min for r in block.writes[0].region]
    loops = sch.get_loops(main)
    by_var = dict(zip((iv.var for iv in block.iter_vars), loops, strict=True))
    size = dict(zip((iv.var for iv in block.iter_vars), extents, strict=True))
    # [n, c, h, w, v], or [n, c, pixel, v] once ``_flatten_pixels`` merged h and w
    c, w, v = (e if isinstance(e, tirx.Var) else None for e in (index[1], *index[-2:]))
    h = index[2] if len(index) == 5 and isinstance(index[2], tirx.Var) else None
    named = {x for x in (c, h, w, v) if x is not None}
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    batch = [by_var[x] for x in spatial if x not in named]
    reductions = [by_var[iv.var] for iv in block.iter_vars
                  if iv.iter_type != tirx.IterVar.DataPar]
    rows, vecs = tile_sizes(size[c] if c is not None else 1, size[w], dense, target)
    co, cv = sch.split(by_var[c], factors=[None, vecs]) if c is not None else ([], [])
    wo, wi = sch.split(by_var[w], factors=[None, rows])
    hi = []
    if pad is not None:
        groups = math.prod(size[x] for x in spatial if x not in named) * size[c]
        band = _band_rows(sch, pad, size[h], groups, target)
        by_var[h], hi = sch.split(by_var[h], factors=[None, band])
    outer_loops = [*batch, *_listed(co), *_listed(by_var.get(h)), *_listed(hi), wo]
    sch.reorder(*outer_loops, *reductions, wi, *_listed(cv), by_var[v])
    if not cv:  # finish_tile expects (rows, vecs, lanes) innermost
        sch.add_unit_loop(by_var[v])
    macs = math.prod(extents)
    if pad is not None:  # parallel over bands, each copies its padded rows, then its tiles
        group = sch.fuse(*outer_loops[:-2])
        if macs >= common.MIN_PARALLEL_MACS:
            sch.parallel(group)
        sch.compute_at(pad, group)
        common.vectorize_inner(sch, sch.get_loops(pad)[1:], size[v])
        outer_loops, macs = outer_loops[-2:], 0
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    common.finish_tile(sch, main, epilogue, outer, reductions[0], size[v], macs=macs)


def _flatten_pixels(sch: s_tir.Schedule, main, epilogue) -> bool:
    """A dense conv over NCHWc tiles its output pixels (h, w) as one axis of ``h * w``, like
    one long row: 7x7 maps get 4 x 3 or 6 x 2 tiles (12 accumulators, one guarded tail)
    instead of 7 x 1, 14x14 maps 4 x 3 with no tail. A tile's pixels may span two rows: each
    is read at its own address, which does not change within the reduction loop.
    MobileNetV2's 7x7 1x1 convs ran 1.15-1.45x faster, its 14x14 ones 1.05-1.12x; ResNet-18's
    7x7 3x3 convs 1.15x, its 3x3 stride-2 conv to 28x28 1.38x. The main block, its accumulator
    buffer and its element-wise ``epilogue`` are re-indexed together (an accumulator tile
    spanning two rows would otherwise be read back through their bounding box). False,
    changing nothing, when the conv or epilogue is not of that form."""
    block, epi = sch.get(main), sch.get(epilogue)
    write = block.writes[0]
    out = [int(d) for d in write.source.ty.shape]
    data = [r for r in block.reads if len(r.region) == 5 and not r.source.same_as(write.source)]
    weights = [r for r in block.reads if len(r.region) == 6]
    reads = [r for r in epi.reads if r.source.same_as(write.source)]
    if len(out) != 5 or len(data) != 1 or len(weights) != 1 or len(reads) != 1 \
            or not all(tvm_ffi.structural_equal(a.min, b.min) for a, b in zip(
                reads[0].region, epi.writes[0].region, strict=True)):
        return False
    at_main, at_epi = _pixel_axes(block), _pixel_axes(epi)
    if at_main is None or at_epi is None:
        return False
    width = out[3]

    def merged(at: int):
        return lambda *ivs: [*ivs[:at], ivs[at] * width + ivs[at + 1], *ivs[at + 2:]]

    sch.transform_layout(main, ("write", 0), lambda n, c, y, x, v: (n, c, y * width + x, v))
    sch.transform_block_layout(main, tirx.IndexMap.from_func(
        merged(at_main), ndim=len(block.iter_vars)))
    sch.transform_block_layout(epilogue, tirx.IndexMap.from_func(
        merged(at_epi), ndim=len(epi.iter_vars)))
    return True


def _pixel_axes(block: tirx.SBlock) -> int | None:
    """The position of the iter var that indexes the written rows, when the next one indexes
    the columns (so the two can merge); else None."""
    ivars = [iv.var for iv in block.iter_vars]
    index = [r.min for r in block.writes[0].region]
    at = [next((i for i, x in enumerate(ivars) if x.same_as(e)), None) for e in index[2:4]]
    return at[0] if None not in at and at[1] == at[0] + 1 else None


def banded(sch: s_tir.Schedule, main, pad) -> bool:
    """Whether a depthwise conv or pool reads a per-band padded copy made by ``pad`` rather
    than testing bounds in its inner loop. Those tests cost up to 2x at stride 1 (MobileNetV2's
    56x56 depthwise: 175 vs 93 us with the copy; 28x28 60 vs 35; 14x14 23 vs 19); a copy loses
    on 7-wide maps (65% of a 9x9 copy is border) and at stride 2 (4 input pixels copied per
    output: 81 vs 158 us on 112x112)."""
    block = sch.get(main)
    out = block.writes[0].source.ty.shape
    padded = sch.get(pad).writes[0].source.ty.shape
    index = [r.min for r in block.writes[0].region]
    kernel = [int(iv.dom.extent) for iv in block.iter_vars
              if iv.iter_type != tirx.IterVar.DataPar]
    return len(out) == len(padded) == 5 and len(kernel) == 2 \
        and all(isinstance(e, tirx.Var) for e in index[1:4]) and int(out[3]) >= _BAND_MIN_WIDTH \
        and int(padded[2]) == int(out[2]) + kernel[0] - 1 \
        and int(padded[3]) == int(out[3]) + kernel[1] - 1


# Stride-1 windows on maps at least this wide read per-band padded copies (see ``banded``);
# a band's copy stays within this many bytes (an L1-L2 resident block) where it can, and
# there are at least this many bands per core.
_BAND_MIN_WIDTH = 14
_BAND_BYTES = 64 << 10
_BANDS_PER_CORE = 4


def _band_rows(sch: s_tir.Schedule, pad, height: int, groups: int, target: Target) -> int:
    """Output rows per band: a divisor of ``height`` leaving at least ``_BANDS_PER_CORE``
    bands per core over ``groups`` (batch x channel blocks), whose padded rows (the band's
    plus the kernel's halo) fit ``_BAND_BYTES`` where possible."""
    buf = sch.get(pad).writes[0].source.ty
    halo = int(buf.shape[2]) - height  # kernel rows - 1: the window is stride 1 (``banded``)
    row_bytes = int(buf.shape[3]) * int(buf.shape[4]) * tvm.DataType(buf.dtype).bits // 8
    need = -(-_BANDS_PER_CORE * common.num_cores(target) // groups)
    return common.divisor_at_most(
        height, max(1, min(height // need, _BAND_BYTES // row_bytes - halo)))


def _listed(loop) -> list:
    return [] if loop is None or loop == [] else [loop]
