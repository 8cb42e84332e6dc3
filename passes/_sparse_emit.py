"""Relax the Sparsify pass emits: ``call_tir`` of a BSR kernel (``schedules/{cpu,gpu}/
sparse_matmul.py``) with the weight as constant data/indices/indptr/scale arrays, and the
im2col view that runs a conv2d through the same kernel."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmcompress.passes._sparse_math import Bsr
from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.cpu.sparse_matmul import SparseShape, bsr_matmul
from tvmcompress.schedules.gpu.sparse_matmul import bsr_matmul_gpu

KERNEL = "bsr_matmul"
# A parallel launch costs tens of microseconds on a quiet machine and up to a time slice (ms)
# on a loaded one; a sparse product below ~4M MACs finishes in less than that on one core.
PARALLEL_MACS = 1 << 22


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def kernel_for(shape: SparseShape, relu: bool, target: tvm.target.Target | None):
    """The GPU kernel on GPU targets, else the CPU one (parallel when the work pays for it)."""
    if target is not None and "gpu" in target.keys:
        return bsr_matmul_gpu(shape, relu)
    cores = common.num_cores(target) if target is not None else 1
    macs = shape.m * shape.nnzb * shape.bk * shape.bn
    return bsr_matmul(shape, relu, cores if macs >= PARALLEL_MACS else 1)


def emit_bsr(bb: relax.BlockBuilder, x2d: relax.Expr, bsr: Bsr, bias: np.ndarray | None,
             relu: bool, target) -> relax.Expr:
    """``act(x2d @ W * scale + bias)`` for a 2-D ``x2d`` [M, K] as one kernel call."""
    m, k = _shape(x2d)
    n = bsr.scale.size
    data, indices = bsr.padded()
    shape = SparseShape(m, k, n, *bsr.block, bsr.nnzb, str(data.dtype))
    gv = bb.add_func(kernel_for(shape, relu, target), KERNEL)
    bias = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32).reshape(n)
    args = [x2d, *(relax.const(a) for a in (data, indices, bsr.indptr, bsr.scale, bias))]
    return bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType([m, n], "float32")))


def emit_matmul(bb, call: relax.Call, bsr: Bsr, bias, relu: bool, target) -> relax.Expr:
    """``x[..., K] @ W`` with rows flattened for the kernel and the shape restored after."""
    x = call.args[0]
    x_shape = _shape(x)
    rows = int(np.prod(x_shape[:-1]))
    x2d = x if len(x_shape) == 2 else bb.emit(relax.op.reshape(x, [rows, x_shape[-1]]))
    y = emit_bsr(bb, x2d, bsr, bias, relu, target)
    out_shape = [*x_shape[:-1], bsr.scale.size]
    return y if len(x_shape) == 2 else relax.op.reshape(y, out_shape)


def im2col(bb: relax.BlockBuilder, call: relax.Call) -> tuple[relax.Expr, list[int]]:
    """NCHW input -> ``[N*Ho*Wo, C*kh*kw]`` patches (columns ordered c, kh, kw like
    ``conv_as_matrix``); a 1x1 stride-1 conv is just a transpose."""
    x = call.args[0]
    a = call.attrs
    nb, c = _shape(x)[:2]
    _, _, kh, kw = _shape(call.args[1])
    _, _, ho, wo = _shape(call)
    sh, sw = (int(v) for v in a.strides)
    dh, dw = (int(v) for v in a.dilation)
    top, left, bottom, right = (int(v) for v in a.padding)
    if (kh, kw, sh, sw, top, left, bottom, right) == (1, 1, 1, 1, 0, 0, 0, 0):
        cols = relax.op.permute_dims(x, [0, 2, 3, 1])
        return bb.emit(relax.op.reshape(cols, [nb * ho * wo, c])), [nb, ho, wo]
    if top or left or bottom or right:
        x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right]))
    taps = []
    for i in range(kh):
        for j in range(kw):
            begin = [i * dh, j * dw]
            end = [i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1]
            tap = relax.op.strided_slice(x, [2, 3], begin, end, [sh, sw])
            taps.append(relax.op.expand_dims(tap, [2]))
    patches = relax.op.concat(taps, axis=2)  # [N, C, kh*kw, Ho, Wo]
    cols = relax.op.permute_dims(patches, [0, 3, 4, 1, 2])
    return bb.emit(relax.op.reshape(cols, [nb * ho * wo, c * kh * kw])), [nb, ho, wo]


def emit_conv(bb, call: relax.Call, bsr: Bsr, bias, relu: bool, target) -> relax.Expr:
    """conv2d (groups 1, NCHW/OIHW) as im2col -> BSR matmul -> back to NCHW."""
    cols, (nb, ho, wo) = im2col(bb, call)
    y = emit_bsr(bb, cols, bsr, bias, relu, target)
    y = relax.op.reshape(y, [nb, ho, wo, bsr.scale.size])
    return relax.op.permute_dims(y, [0, 3, 1, 2])
