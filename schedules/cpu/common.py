"""Shared pieces of the CPU rules: target facts (vector lanes, registers, cores), tile choice,
and a base rule that turns any scheduling failure into "not mine" so the next rule gets a turn.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.target import Target, codegen

logger = logging.getLogger(__name__)


def static_shape(expr: relax.Expr) -> list[int] | None:
    """The dims of a Relax tensor expression when all are known integers, else None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = ty.shape.values if hasattr(ty.shape, "values") else None
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def is_cpu(target: Target) -> bool:
    """Our CPU rules apply to LLVM CPU targets only, never to GPU targets or their hosts."""
    return target.kind.name == "llvm" and "gpu" not in target.keys


def vector_bits(target: Target) -> int:
    """SIMD register width in bits.

    ``llvm_get_vector_width`` answers 512 for every x86 CPU in TVM 0.27 (even AVX2-only Zen 3),
    so x86 asks LLVM for the features instead; other CPUs (NEON: 128) use LLVM's answer.
    """
    triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
    if triple.startswith(("x86", "i686", "amd64")):
        if codegen.target_has_features("avx512f", target):
            return 512
        return 256 if codegen.target_has_features("avx", target) else 128
    return max(128, min(512, int(codegen.llvm_get_vector_width(target))))


def vector_registers(target: Target) -> int:
    """Architectural SIMD registers: 32 on AVX-512 and AArch64, 16 on AVX2/SSE."""
    triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
    if triple.startswith(("x86", "i686", "amd64")):
        return 32 if vector_bits(target) == 512 else 16
    return 32


def lanes(target: Target, dtype: str) -> int:
    """Vector lanes of ``dtype`` on ``target`` (8 for fp32 on AVX2)."""
    return max(1, vector_bits(target) // tvm.DataType(dtype).bits)


def num_cores(target: Target) -> int:
    return int(target.attrs.get("num-cores", 1) or 1)


def lanes_for(extent: int, max_lanes: int) -> int:
    """Largest power of two <= ``max_lanes`` dividing ``extent``: no tail, so no predicate
    inside the vector loop (which would make TVM scalarize the whole loop)."""
    lanes_ = max_lanes
    while lanes_ > 1 and extent % lanes_:
        lanes_ //= 2
    return lanes_


def divisor_at_most(extent: int, limit: int) -> int:
    """Largest divisor of ``extent`` that is <= ``limit``."""
    return next(d for d in range(min(limit, extent), 0, -1) if extent % d == 0)


def row_tile(extent: int, limit: int) -> int:
    """Rows per register tile: a divisor when a good one exists, else ``limit`` with a guarded
    tail (the guard is per row, outside the vector loop, so vectorization survives)."""
    best = divisor_at_most(extent, limit)
    return best if best * 2 > limit or extent <= limit else limit


def const_extents(sch: s_tir.Schedule, loops) -> list[int] | None:
    """Loop extents as ints, or None when any is symbolic (we tile static shapes only)."""
    out = []
    for loop in loops:
        extent = sch.get(loop).extent
        if not isinstance(extent, tirx.IntImm):
            return None
        out.append(int(extent))
    return out


def blocks_after_inline(sch: s_tir.Schedule) -> list[SBlockInfo] | None:
    """Normalize the function and inline every injective block that can be inlined."""
    return try_inline_contiguous_spatial(sch, normalize_prim_func(sch))


def vectorize_inner(sch: s_tir.Schedule, loops, max_lanes: int):
    """Vectorize the innermost of ``loops`` by a dividing lane count; unroll nothing else."""
    extents = const_extents(sch, loops)
    if not loops or extents is None:
        return
    width = lanes_for(extents[-1], max_lanes)
    if width > 1:
        sch.vectorize(sch.split(loops[-1], factors=[None, width])[1])


# Below these sizes a parallel loop costs more than it saves: waking the thread pool takes
# microseconds on a quiet machine and a whole time slice on a loaded one.
MIN_PARALLEL_MACS = 1 << 17
MIN_PARALLEL_ELEMENTS = 1 << 14


def tile_accumulator(sch: s_tir.Schedule, main, epilogue, outer, tile_layout=None,
                     macs: int = MIN_PARALLEL_MACS):
    """``main``'s accumulator tile as a per-tile buffer (``tile_layout`` reorders it), the
    epilogue (a new write-back stage when None) computed per tile, ``outer`` parallel when
    ``macs`` is worth it; returns the epilogue block. Shared by the fp32 and int8 rules.

    The tile buffer keeps the "global" scope on purpose: TVM 0.27 lowers a "local" buffer on
    CPUs to a ``TVMBackendAllocWorkspace`` call per tile (only "global" buffers under 1 KB
    become a stack ``alloca``), and LLVM cannot keep a heap tile in registers, so every tile
    paid a call, a free, and stores and reloads of each accumulator. As an alloca the tile is
    promoted to registers: MobileNetV2's 1x1 convs ran up to 2x faster."""
    if epilogue is None:
        epilogue = sch.cache_write(main, 0, "global")
    sch.set_scope(main, 0, "global")
    if tile_layout is not None:
        sch.transform_layout(main, ("write", 0), tile_layout)
    sch.reverse_compute_at(epilogue, outer)
    if macs >= MIN_PARALLEL_MACS:
        sch.parallel(outer)
    return epilogue


def finish_tile(sch: s_tir.Schedule, main, epilogue, outer, first_reduce, lanes: int,
                tile_layout=None, macs: int = MIN_PARALLEL_MACS) -> None:
    """Common tail of the register-tiled rules, once ``main``'s loops are ordered
    ``outer, reductions..., rows, vectors, lanes``: the accumulator tile becomes a per-tile
    buffer (registers after unrolling, see ``tile_accumulator``; ``tile_layout`` reorders it
    so the vector axis is innermost),
    the epilogue is computed per tile from it, ``outer`` runs in parallel (when ``macs`` is
    worth it), and the reduction's init is split out (after ``parallel``, which needs the
    reduction whole)."""
    epilogue = tile_accumulator(sch, main, epilogue, outer, tile_layout, macs)
    rows, vecs, vec = sch.get_loops(main)[-3:]
    sch.vectorize(vec)
    sch.unroll(vecs)
    sch.unroll(rows)
    sch.decompose_reduction(main, first_reduce)
    vectorize_inner(sch, sch.get_loops(epilogue)[1:], lanes)


def parallel_vectorize(sch: s_tir.Schedule, block, max_lanes: int, cores: int) -> None:
    """An injective block on its own (all loops spatial): vectorize the innermost loop by a
    dividing lane count, and run the fewest outer loops that give every core a few chunks in
    parallel (fused into one)."""
    loops = sch.get_loops(block)
    extents = const_extents(sch, loops)
    if not loops or extents is None:
        return
    width = lanes_for(extents[-1], max_lanes)
    if width > 1:
        loops[-1], vec = sch.split(loops[-1], factors=[None, width])
        sch.vectorize(vec)
        extents[-1] //= width
    if math.prod(extents) * width < MIN_PARALLEL_ELEMENTS:
        return
    count, total = 0, 1
    while count < len(loops) and total < 4 * cores:
        total *= extents[count]
        count += 1
    if total > 1:
        sch.parallel(sch.fuse(*loops[:count]) if count > 1 else loops[0])


class CPURule(dl.ScheduleRule):
    """Base of our CPU rules: target check, and a failed schedule primitive means "not mine"."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            return sch if self.schedule(sch, target) else None
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # TVM's errors
            logger.debug("%s did not apply: %s", type(self).__name__, err)
            return None

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        """Schedule ``sch`` in place; False (or a schedule error) when the function is not
        this rule's kind."""
        raise NotImplementedError
