"""Pre-pack constant matmul weights into panels: ``W[k, n] -> Wp[n // v, k, n % v]``; the
same for conv2d weights by output channel (``pack_conv``).

The GEMM tile reads a K x v strip of the weight per k step. In the native [K, N] layout those
rows are N floats apart: with N a multiple of 1024 every row maps to the same L1 set (4K
aliasing), so the strip falls out of L1 and L2 and the kernel runs at a fifth of its speed.
Packed at compile time, the strip is one contiguous stream. The matmul becomes a TE compute
that reads the packed constant; ``Matmul`` tiles it with the same ``v`` (``tile_sizes``), so
each register tile walks exactly one panel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from tvmcompress.schedules.cpu import common, pack_conv
from tvmcompress.schedules.cpu.matmul import tile_sizes


def pack_np(weight: np.ndarray, width: int) -> np.ndarray:
    """[K, N] -> [N / width, K, width]; ``width`` must divide N."""
    k, n = weight.shape
    return np.ascontiguousarray(weight.reshape(k, n // width, width).transpose(1, 0, 2))


def packed_matmul(x: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """``y[.., m, n] = sum_k x[.., m, k] * packed[n // w, k, n % w]``."""
    panels, k_dim, width = packed.shape
    red = te.reduce_axis((0, k_dim), name="k")

    def body(*idx):
        n = idx[-1]
        return te.sum(x[(*idx[:-1], red)] * packed[n // width, red, n % width], axis=red)

    return te.compute((*x.shape[:-1], panels * width), body, name="matmul")


@mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: Target):
        super().__init__(mod)
        self.target = target

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if len(call.args) < 2 or not isinstance(call.args[1], Constant):
            return call
        if call.op == tvm.ir.Op.get("relax.nn.conv2d"):
            return self._conv(call)
        if call.op != tvm.ir.Op.get("relax.matmul"):
            return call
        weight = call.args[1].value.numpy()
        x_shape = common.static_shape(call.args[0])
        if weight.ndim != 2 or weight.dtype != np.float32 or not x_shape or len(x_shape) < 2 \
                or str(call.args[0].ty.dtype) != "float32":
            return call
        _, vecs, lanes = tile_sizes(x_shape[-2], weight.shape[1], self.target)
        if vecs * lanes == 1:
            return call
        packed = relax.const(pack_np(weight, vecs * lanes))
        return self.builder_.call_te(packed_matmul, call.args[0], packed,
                                     primfunc_name_hint="matmul_packed")


    def _conv(self, call: relax.Call) -> relax.Expr:
        attrs = call.attrs
        weight = call.args[1].value.numpy()
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        if layouts != ("NCHW", "OIHW", "NCHW") or weight.dtype != np.float32 \
                or not common.static_shape(call.args[0]) \
                or str(call.args[0].ty.dtype) != "float32" \
                or str(attrs.out_dtype) not in ("None", "", "void", "float32"):
            return call
        width = pack_conv.panel_width(weight.shape[0], int(attrs.groups), self.target)
        if width == 1:
            return call
        packed = relax.const(pack_conv.pack_np(weight, width))
        return self.builder_.call_te(
            pack_conv.packed_conv2d, call.args[0], packed, [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation],
            int(attrs.groups), primfunc_name_hint="conv2d_packed")


def pack_weights(target: Target) -> tvm.transform.Pass:
    """Relax module pass: pack every fp32 ``matmul(x, W)`` with constant 2-D ``W`` and every
    NCHW ``conv2d(x, W)`` with constant ``W`` whose groups fill whole vectors (CPU only)."""

    @tvm.transform.module_pass(opt_level=0, name="PackWeights")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not common.is_cpu(target):
            return mod
        packer = _Packer(mod, target)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                packer.builder_.update_func(gv, packer.visit_expr(func))
        return packer.builder_.finalize()

    return _pass
