"""Block-sparse (BSR) matmul kernels for CPUs, with the bias / ReLU / int8-scale epilogue fused.

``y[m, n] = act(scale[n] * sum_k x[m, k] * W[k, n] + bias[n])`` with W stored as the BSR matrix of
W^T: block rows are ``bn`` output columns, block columns ``bk`` rows of W; ``indptr[j]`` ..
``indptr[j + 1]`` are the blocks of output panel ``j``, ``indices[p]`` their k-block and
``data[p, kk, c] = W[indices[p] * bk + kk, j * bn + c]``. With ``bn`` = the vector width (8 fp32
on AVX2, 16 on AVX-512, 4 on NEON) every nonzero block is one vector load, one broadcast of x and
one FMA per row; zero blocks cost nothing. Unstructured sparsity is the 1 x 1 case (CSR).

The kernel is plain TIR (data-dependent loop bounds, no extern call), written already scheduled:
(row tile, panel) pairs are split into one contiguous chunk per core (parallel only when the
caller asks: small products lose more to the launch than they gain), x's rows of a tile stay in
L1 while the panels stream past, the accumulator tile lives in registers (``local``,
unrolled rows, vectorized columns), and a batch-1 GEMV keeps ``SPLIT`` partial sums over the
nonzero blocks so consecutive FMAs do not wait on each other (latency, not bandwidth, bounds a
one-row sparse product). It is marked ``tirx.is_scheduled`` so the default rules leave it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.tvmscript import frames_without_source

SPLIT = 4  # independent accumulators over the block list of a one-row product
MAX_ROWS = 8  # rows of x per register tile: rows accumulator vectors + 1 + a broadcast
NEG_INF = -3.0e38


@dataclass(frozen=True)
class SparseShape:
    """Static facts of one BSR product; ``nnzb`` is the number of stored blocks."""

    m: int
    k: int
    n: int
    bk: int
    bn: int
    nnzb: int
    dtype: str = "float32"  # of the stored values: float32, or int8 with per-column scales

    def __post_init__(self) -> None:
        if self.k % self.bk or self.n % self.bn:
            raise ValueError(f"block {self.bk}x{self.bn} does not divide W[{self.k}, {self.n}]")


def vector_block(target: Target | None, dtype: str = "float32") -> int:
    """Columns per block that fill one SIMD register on ``target`` (8 fp32 lanes without a CPU
    target: none given, or a GPU, where 8 threads of a warp share a block)."""
    return common.lanes(target, dtype) if target is not None and common.is_cpu(target) else 8


def row_tile(m: int) -> int:
    """Rows per register tile: the largest divisor of ``m`` up to ``MAX_ROWS`` (no row tail)."""
    return common.divisor_at_most(m, MAX_ROWS)


def bsr_matmul(shape: SparseShape, relu: bool = False, cores: int = 1) -> tirx.PrimFunc:
    """The scheduled PrimFunc ``(x, data, indices, indptr, scale, bias) -> y`` for ``shape``.

    ``scale`` multiplies each output column (ones for float weights; the int8 scales otherwise),
    ``bias`` is added after it and ``relu`` clamps at zero; all in registers before the store.
    """
    m, k, n, bk, bn, nnzb = (shape.m, shape.k, shape.n, shape.bk, shape.bn, shape.nnzb)
    mr = row_tile(m)
    split = SPLIT if mr == 1 else 1
    panels, tiles = n // bn, m // mr
    lo = 0.0 if relu else NEG_INF
    dtype = shape.dtype
    nnz_buf = max(nnzb, 1)
    # One chunk of (panel, row tile) pairs per core, the accumulator allocated once per chunk:
    # a buffer allocated inside a parallel loop's body becomes a workspace call per iteration.
    chunks = max(1, min(cores, panels * tiles))
    per = (panels * tiles + chunks - 1) // chunks

    with frames_without_source():  # parsed here, closure variables in reach
        @T.prim_func(private=True)
        def kernel(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnz_buf, bk, bn), dtype),
                   indices: T.Buffer((nnz_buf,), "int32"), indptr: T.Buffer((panels + 1,), "int32"),
                   scale: T.Buffer((n,), "float32"), bias: T.Buffer((n,), "float32"),
                   y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for t in T.parallel(chunks) if chunks > 1 else T.serial(1):
                acc = T.alloc_buffer((split, mr, bn), "float32")  # stack, kept in registers
                for jm in T.serial(t * per, T.min(t * per + per, panels * tiles)):
                    j = jm % panels
                    row0 = jm // panels * mr
                    start = indptr[j]
                    count = indptr[j + 1] - start
                    for s in T.unroll(split):
                        for r in T.unroll(mr):
                            for c in T.vectorized(bn):
                                acc[s, r, c] = T.float32(0)
                    for q in T.serial((count + split - 1) // split):
                        for s in T.unroll(split):
                            if q * split + s < count:
                                p = start + q * split + s
                                col = indices[p] * bk
                                for kk in T.unroll(bk):
                                    for r in T.unroll(mr):
                                        for c in T.vectorized(bn):
                                            acc[s, r, c] = acc[s, r, c] + x[row0 + r, col + kk] * \
                                                T.Cast("float32", data[p, kk, c])
                    for r in T.unroll(mr):
                        for c in T.vectorized(bn):
                            y[row0 + r, j * bn + c] = T.max(
                                _total(acc, r, c, split) * scale[j * bn + c] + bias[j * bn + c],
                                T.float32(lo))

    return kernel


def _total(acc, r, c, split: int):
    """Sum of the ``split`` partial accumulators (a Python-time fold, so no loop in TIR)."""
    total = acc[0, r, c]
    for s in range(1, split):
        total = total + acc[s, r, c]
    return total
