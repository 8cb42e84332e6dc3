"""int4 weight-only matmul for CPUs: the packed weight is dequantized in registers, never in
memory.

The kernel is what ``passes/_int4_matmul.py`` emits: per group of k, ``dot = x . nibbles`` (the
block tagged ``INT4_GROUP_RULE``), then ``y += scale * dot + offset * sum(x)`` (tagged
``DEQUANT_MATMUL_RULE``), over weights in 64-column panels of uint32 words (8 k per word).
Tiles are ``rows x vecs x lanes`` outputs with the lanes along n; per group the tile's dot
products live in registers and each word-vector load feeds 8 k steps of (shift, mask,
convert, FMA into ``rows`` accumulators). Batch 1 is a GEMV: one row, 8 vectors of
independent accumulators (FMA latency), the panels run in parallel. Larger batches take a
rows x 2 (x 3 with 32 registers) tile, so each dequantized vector is used ``rows`` times.
Everything else in the function (input reshape, elementwise epilogue) is inlined.
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from tvmcompress.passes._int4_matmul import (
    DEQUANT_MATMUL_RULE,
    INT4_GROUP_RULE,
    INT4_PANEL,
    NIBBLES,
)
from tvmcompress.schedules.cpu import common


def _tagged(sch: s_tir.Schedule, rule: str):
    """The blocks annotated ``schedule_rule = rule`` (TE compute attrs become annotations)."""
    found = []
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        ann = sch.get(block).annotations
        if ann and str(ann.get("schedule_rule", "")) == rule:
            found.append(block)
    return found


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
    except (RuntimeError, ValueError):
        return False
    return True


def tile_sizes(m: int, n: int, target: Target) -> tuple[int, int, int]:
    """(rows, vecs, lanes) with ``vecs * lanes`` dividing the weight panel (``INT4_PANEL``
    columns, or all n when narrower), so a tile never straddles two panels. GEMV (m == 1): up
    to 8 vectors of accumulators (fewer cannot hide FMA latency); GEMM: a rows x 2 tile (x 3
    with 32 registers), leaving registers for the dequantized weights."""
    width = math.gcd(n, INT4_PANEL) if n > INT4_PANEL else n
    lanes = common.lanes_for(width, common.lanes(target, "float32"))
    if m == 1:
        return 1, common.divisor_at_most(width // lanes, 8), lanes
    regs = common.vector_registers(target)
    rows = common.row_tile(m, 6 if regs == 16 else 8)
    return rows, common.divisor_at_most(width // lanes, 2 if regs == 16 else 3), lanes


class Int4Matmul(common.CPURule):
    """``y[m, n] = sum_g s[g, n] * dot[m, g, n] + o[g, n] * xsum[m, g]`` (+ epilogue), where
    ``dot`` is the group's x . nibbles (``passes/_quant_emit.py::_grouped_matmul``)."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        mains, dots = _tagged(sch, DEQUANT_MATMUL_RULE), _tagged(sch, INT4_GROUP_RULE)
        if len(mains) != 1 or len(dots) != 1:
            return False
        main, dot = mains[0], dots[0]
        epilogue = _inline_others(sch, {sch.get(main), sch.get(dot)})
        loops = sch.get_loops(main)
        extents = common.const_extents(sch, loops)
        if extents is None or len(loops) != 3:
            return False
        m, n, groups = extents
        rows, vecs, lanes = tile_sizes(m, n, target)
        i, j, g = loops
        io, ii = sch.split(i, factors=[None, rows])
        jo, jv, jl = sch.split(j, factors=[None, vecs, lanes])
        sch.reorder(jo, io, g, ii, jv, jl)
        outer = sch.fuse(jo, io)
        if m * n * groups * 32 >= common.MIN_PARALLEL_MACS and sch.get(outer).extent.value > 1:
            sch.parallel(outer)  # before compute_at: the group dot then sits in a reduction loop
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, outer)
            common.vectorize_inner(sch, sch.get_loops(epilogue)[1:], lanes)
        _group_dot(sch, dot, g, (rows, vecs, lanes))
        ii, jv, jl = sch.get_loops(main)[-3:]
        sch.vectorize(jl)
        sch.unroll(jv)
        sch.unroll(ii)
        sch.decompose_reduction(main, g)
        return True


def _group_dot(sch: s_tir.Schedule, dot, g_loop, tile: tuple[int, int, int]) -> None:
    """One group's ``x . nibbles`` for the tile, in registers: words of 8 k outer (one vector
    load each), then k, rows, vectors, lanes."""
    rows, vecs, lanes = tile
    sch.compute_at(dot, g_loop)
    # The dot tile keeps the "global" scope: compacted to the tile it becomes a stack buffer
    # LLVM keeps in registers; "local" is a TVMBackendAllocWorkspace call per tile on CPUs
    # (see common.tile_accumulator).
    loops = sch.get_loops(dot)
    below = loops[[sch.get(lp).same_as(sch.get(g_loop)) for lp in loops].index(True) + 1:]
    *spatial, kk = below  # compute_at drops unit loops (one row, one group, one column)
    row_loops = spatial[:1] if rows > 1 else []
    ko, kp = sch.split(kk, factors=[None, NIBBLES])
    inner = [kp]
    if vecs * lanes > 1:
        cv, cl = sch.split(spatial[-1], factors=[None, lanes])
        sch.reorder(ko, kp, *row_loops, cv, cl)
        sch.vectorize(cl)
        inner.append(cv)
    else:
        sch.reorder(ko, kp, *row_loops)
    for loop in (*inner, *row_loops):
        sch.unroll(loop)
    sch.decompose_reduction(dot, ko)


def _inline_others(sch: s_tir.Schedule, keep: set):
    """Inline every other block (reshapes before, elementwise after); the one consumer that
    cannot be inlined is returned as the epilogue. The group sums of x stay at the root."""
    epilogue = None
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        if any(stmt.same_as(k) for k in keep) or stmt.name_hint == "int4_group_xsum":
            continue
        try:
            sch.compute_inline(block)
            continue
        except (RuntimeError, ValueError):
            pass
        try:
            sch.reverse_compute_inline(block)
        except (RuntimeError, ValueError):
            if epilogue is not None:
                raise
            epilogue = block
    return epilogue
