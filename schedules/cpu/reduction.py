"""Row reductions on CPUs: abs-max (int8-dynamic scales), softmax (with its isnan/where tail),
layer_norm, and full reductions (per-tensor abs-max).

dlight's ``cpu.Reduction`` keeps every reduction scalar and every intermediate full-size, and
takes no function whose last block is a reduction (abs-max stayed unscheduled). Here one loop
(parallel when big enough) runs over the rows and every block works on one row inside it:
each reduction is split by the vector width and ``rfactor``-ed into a vector of partial results
(a per-lane max or sum, combined once per row), elementwise stages are vectorized, injective
stages with a single consumer are inlined, and what remains (softmax's exp) is one row long:
TVM places a buffer used only under the row loop inside it and shrinks it to the row.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, get_root_block, normalize_prim_func
from tvm.target import Target

from tvmcompress.schedules.cpu import common

# ``isnan`` is one vector compare (``fcmp uno``) in LLVM's codegen (the fast exp lowering emits
# it on vectors already), but TVM does not mark the op vectorizable, so its vectorizer turned
# every loop with an isnan in it (softmax's NaN guard from torch's SDPA export) into scalar
# code, division included.
if not tvm.ir.Op.get("tirx.isnan").get_attr("TVectorizable"):
    tvm.ir.register_op_attr("tirx.isnan", "TVectorizable", True)

# Element visits (summed over the blocks) below which one thread is faster: a row reduction
# does about one vector op per element, so waking the pool pays off later than for injective
# kernels (abs-max over 128x384 took 2.1 us alone and 3.2 us on two threads).
MIN_PARALLEL_WORK = common.MIN_PARALLEL_MACS

# Vector registers of partial results per reduction: two independent add/max chains hide
# the instruction latency (layer_norm 128x384: 21 -> 16 us, softmax -10%; four: no better).
ACCUMULATORS = 2


class RowReduction(common.CPURule):
    """Functions made of reductions over the innermost axes, with injective producers and
    consumers over the same rows; anything else (symbolic shapes included) is not ours."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        infos = _static_infos(sch)
        if infos is None:
            return False
        _inline_single_consumers(sch, infos)
        infos = _static_infos(sch)
        rows = row_axes(sch, infos) if infos is not None else None
        if rows is None:
            return False
        work = sum(math.prod(int(i.dom) for i in info.iters) for info in infos)
        partials = [_vector_partials(sch, info, target) for info in infos
                    if info.is_reduction()]
        blocks = sch.get_child_blocks(get_root_block(sch))
        outer = None
        if rows:
            loops = sch.get_loops(blocks[-1])[:rows]
            outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            for block in reversed(blocks[:-1]):
                sch.compute_at(block, outer, preserve_unit_loops=True)
            if work >= MIN_PARALLEL_WORK:
                sch.parallel(outer)
        partial_names = {sch.get(p).name_hint for p in partials if p is not None}
        for block in sch.get_child_blocks(get_root_block(sch)):
            inner = sch.get_loops(block)[1 if rows else 0:]
            if sch.get(block).name_hint in partial_names:
                _finish_partial(sch, block, inner, regenerated=bool(rows))
            elif all(v.iter_type == tirx.IterVar.DataPar for v in sch.get(block).iter_vars):
                common.vectorize_inner(sch, inner, _lanes(sch, block, target))
        return True


def _static_infos(sch: s_tir.Schedule) -> list[SBlockInfo] | None:
    """Block infos when every extent is static and some block reduces; else None."""
    infos = normalize_prim_func(sch)
    if not infos or all(info.is_injective() for info in infos):
        return None
    if any(not isinstance(i.dom, int | tirx.IntImm) for info in infos for i in info.iters):
        return None
    return infos


def _inline_single_consumers(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> None:
    """Inline injective blocks (abs, isnan, softmax's normalize) into their only consumer;
    a block read by several (softmax's exp) stays, and is computed once per row."""
    for info in reversed(infos[:-1]):
        if info.is_injective() and len(sch.get_consumers(info.block_rv)) == 1:
            try:
                sch.compute_inline(info.block_rv)
            except (RuntimeError, ValueError):  # e.g. a block that writes an output
                continue


def row_axes(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> int | None:
    """How many leading axes are rows (0: a full reduction), or None when the function is not
    a row reduction: every reduction has the same leading spatial axes, reads its input along
    the innermost axis, and every read that the reduction axis indexes is indexed by all the
    row axes too (a GEMV's weight vector is not: that is a matmul, not a row reduction)."""
    reductions = [info for info in infos if info.is_reduction()]
    kinds = {info.dom_kind() for info in reductions}
    if len(kinds) != 1 or any(info.dom_kind() not in _spatial_then_reduce(info)
                              for info in infos):
        return None
    rows = next(iter(kinds)).count("S")
    for info in reductions:
        block = sch.get(info.block_rv)
        row_vars = {v.var for v in info.iters[:rows] if int(v.dom) > 1}
        last = info.iters[-1].var
        indexed = False
        for read in block.reads:
            used = [set(tirx.analysis.undefined_vars(r.min, [])) for r in read.region]
            every = set().union(*used)
            if any(v.var in every for v in info.iters[rows:]) and not row_vars <= every:
                return None
            indexed |= bool(used) and last in used[-1]
        if not indexed:
            return None
    if any(len(info.iters) < rows for info in infos):
        return None
    return rows


def _spatial_then_reduce(info: SBlockInfo) -> set[str]:
    n = len(info.iters)
    return {"S" * s + "R" * (n - s) for s in range(n + 1)}


def _lanes(sch: s_tir.Schedule, block, target: Target) -> int:
    """Vector lanes for the type the block writes (float32's for bool)."""
    writes = sch.get(block).writes
    dtype = writes[0].source.dtype if writes else "float32"
    return common.lanes(target, dtype if tvm.DataType(dtype).bits >= 8 else "float32")


def _vector_partials(sch: s_tir.Schedule, info: SBlockInfo, target: Target):
    """Split the (fused) reduction axis by ``ACCUMULATORS`` vector widths and ``rfactor`` the
    lanes out: returns the partial block (one accumulator per lane), or None when the axis is
    too short or has no dividing width (the reduction then stays scalar)."""
    loops = sch.get_loops(info.block_rv)
    spatial = info.dom_kind().count("S")
    reduce_loops = loops[spatial:]
    extent = math.prod(int(i.dom) for i in info.iters[spatial:])
    width = common.lanes_for(extent, ACCUMULATORS * _lanes(sch, info.block_rv, target))
    if width < 2 or extent < 2 * width:
        return None
    fused = sch.fuse(*reduce_loops) if len(reduce_loops) > 1 else reduce_loops[0]
    _, lane = sch.split(fused, factors=[None, width])
    return sch.rfactor(lane, factor_axis=-1)


def _finish_partial(sch: s_tir.Schedule, block, inner, regenerated: bool) -> None:
    """Steps outside, lanes vectorized inside, then the init split out (after vectorize and
    parallel, which need the reduction whole). ``compute_at`` regenerates the partial block's
    loops in its iterators' order, (lanes, rows..., steps), so those two swap first."""
    if regenerated:
        sch.reorder(inner[-1], inner[0])
        inner = sch.get_loops(block)[-len(inner):]
    sch.vectorize(inner[-1])
    sch.decompose_reduction(block, inner[0])
