"""Blocked GEMM for CPUs: dense, matmul and batched matmul with their fused epilogues.

The output is cut into register tiles of ``mr`` rows x ``nr`` vectors; the k loop runs outside
the tile, so each step is ``nr`` vector loads of B, ``mr`` broadcasts of A and ``mr * nr`` FMAs
into accumulators that live in registers (the tile is a "local" buffer, unrolled). Tiles are
ordered n-panel outer, m inner (the K x nr*lanes panel of B stays in cache while all rows pass)
and the fused (batch, n-panel, m-tile) loop is parallel. The epilogue (bias, GELU, residual)
is computed per tile from the registers, so the accumulator never goes through memory.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr
from tvm.target import Target

from tvmcompress.schedules.cpu import common


class Matmul(common.CPURule):
    """``C[b.., m, n] = sum_k A[b.., m, k] * B[b.., k, n]`` (any batch dims, B maybe shared)."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        infos = common.blocks_after_inline(sch)
        if not infos or not infos[0].is_reduction() or not infos[0].dom_kind().endswith("SR") \
                or infos[0].dom_kind().count("R") != 1 or len(infos) > 2:
            return False
        main = infos[0].block_rv
        if len(infos) == 2 and not infos[1].is_injective():
            return False
        extents = common.const_extents(sch, sch.get_loops(main))
        has_m = _matmul_rows(sch.get(main))
        if extents is None or has_m is None:
            return False
        epilogue = infos[1].block_rv if len(infos) == 2 else None
        _tile(sch, main, epilogue, extents, has_m, target)
        return True


def _matmul_rows(block: tirx.SBlock) -> bool | None:
    """Whether the block has an m axis (unit m axes are normalized away), or None when it is not
    a matmul: two operands, A without n, B without m and with n in its innermost index (so
    vector loads along n are contiguous); the output indexed by the spatial vars in order.
    Plain reductions (sum, mean) have one operand and are left to other rules."""
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    (write,) = block.writes
    indexed = [r.min for r in write.region if isinstance(r.min, tirx.Var)]
    if len(indexed) != len(spatial) or not all(
            a.same_as(b) for a, b in zip(indexed, spatial, strict=True)):
        return None
    reads = [r for r in block.reads if not r.source.same_as(write.source)]
    if len(reads) != 2:
        return None
    n = spatial[-1]
    m = spatial[-2] if len(spatial) > 1 else None
    for a, b in (reads, reads[::-1]):
        uses_a, uses_b = _vars_in(a.region), _vars_in(b.region)
        if n in uses_a or n not in _vars_in(b.region[-1:]) or (m is not None and m in uses_b):
            continue
        return m is not None and m in uses_a
    return None


def _vars_in(ranges) -> set:
    found: set = set()
    for r in ranges:
        found |= collect_vars_used_in_prim_expr(r.min)
    return found


def tile_sizes(m: int, n: int, target: Target, dtype: str = "float32") -> tuple[int, int, int]:
    """(rows, vectors, lanes) of the register tile for an m x n output.

    Accumulators + one vector of B per column vector + one broadcast of A must fit the
    register file: 6x2 on AVX2's 16 registers, 8x3 on 32; one row gets the most vectors it can
    (a GEMV is bound by FMA latency, so it needs many independent accumulators).
    """
    regs = common.vector_registers(target)
    lanes = common.lanes_for(n, common.lanes(target, dtype))
    max_rows = 6 if regs == 16 else 8
    rows = common.row_tile(m, max_rows)
    max_vecs = max(1, (regs - 1) // (rows + 1))
    max_vecs = min(max_vecs, 4 if rows > 1 else 8)
    vecs = common.divisor_at_most(n // lanes, max_vecs)
    return rows, vecs, lanes


def _tile(sch: s_tir.Schedule, main, epilogue, extents: list[int], has_m: bool,
          target: Target) -> None:
    *batch, n_loop, k_loop = sch.get_loops(main)
    if has_m:
        *batch, m_loop = batch
    else:  # m == 1: a unit loop to tile like the others
        m_loop = sch.add_unit_loop(n_loop)
    dtype = str(sch.get(main).writes[0].source.dtype)
    rows, vecs, lanes = tile_sizes(extents[-3] if has_m else 1, extents[-2], target, dtype)
    mo, mi = sch.split(m_loop, factors=[None, rows])
    no, nr, nv = sch.split(n_loop, factors=[None, vecs, lanes])
    sch.reorder(*batch, no, mo, k_loop, mi, nr, nv)
    outer = sch.fuse(*batch, no, mo)
    common.finish_tile(sch, main, epilogue, outer, k_loop, lanes, macs=math.prod(extents))
