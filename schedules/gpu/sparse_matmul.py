"""Block-sparse (BSR) matmul for CUDA, same arguments and epilogue as the CPU kernel
(``schedules/cpu/sparse_matmul.py``): one thread per output element; the threads of a warp
cover consecutive output columns, so the ``bn`` values of a block load coalesced and the x
element is one broadcast per warp. Plain TIR with thread bindings, marked scheduled."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from tvmcompress.schedules.cpu.sparse_matmul import NEG_INF, SparseShape
from tvmcompress.schedules.tvmscript import frames_without_source

THREADS = 128


def bsr_matmul_gpu(shape: SparseShape, relu: bool = False) -> tirx.PrimFunc:
    """``(x, data, indices, indptr, scale, bias) -> y`` for ``shape`` on a GPU."""
    m, k, n, bk, bn = shape.m, shape.k, shape.n, shape.bk, shape.bn
    nnz_buf = max(shape.nnzb, 1)
    panels = n // bn
    blocks = (m * n + THREADS - 1) // THREADS
    lo = 0.0 if relu else NEG_INF
    dtype = shape.dtype

    with frames_without_source():  # parsed here, closure variables in reach
        @T.prim_func(private=True)
        def kernel(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnz_buf, bk, bn), dtype),
                   indices: T.Buffer((nnz_buf,), "int32"), indptr: T.Buffer((panels + 1,), "int32"),
                   scale: T.Buffer((n,), "float32"), bias: T.Buffer((n,), "float32"),
                   y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for b in T.thread_binding(blocks, thread="blockIdx.x"):
                for t in T.thread_binding(THREADS, thread="threadIdx.x"):
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    if b * THREADS + t < m * n:
                        row = (b * THREADS + t) // n
                        col = (b * THREADS + t) % n
                        acc[0] = T.float32(0)
                        for p in T.serial(indptr[col // bn], indptr[col // bn + 1]):
                            for kk in T.serial(bk):
                                acc[0] = acc[0] + x[row, indices[p] * bk + kk] * \
                                    T.Cast("float32", data[p, kk, col % bn])
                        y[row, col] = T.max(acc[0] * scale[col] + bias[col], T.float32(lo))

    return kernel
