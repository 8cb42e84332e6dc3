"""Relax (and TE) for the quantized layers: what ``quantize.py`` emits in place of a float
``matmul(x, W)`` or ``conv2d(x, W)`` with a constant weight."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

from tvmcompress.passes import _int4_matmul as int4
from tvmcompress.passes._quant_math import ACT_DTYPE

DEQUANT_MATMUL_RULE = int4.DEQUANT_MATMUL_RULE
DEQUANT_RULE = "tvmcompress.dequant"
_F32 = "float32"


def const(value, dtype: str | None = None) -> relax.Constant:
    return relax.const(np.asarray(value, dtype=dtype))


def clip(x: relax.Expr, lo: float, hi: float) -> relax.Expr:
    """clip as min/max with tensor constants (R.clip's IntImm bounds trip the report)."""
    return relax.op.minimum(relax.op.maximum(x, const(lo, _F32)), const(hi, _F32))


def contract(call: relax.Call, x: relax.Expr, w: relax.Expr, out_dtype: str | None = None,
             padding=None) -> relax.Call:
    """``call`` (matmul or conv2d) on new operands, attributes kept."""
    if call.op.name == "relax.matmul":
        # [batch, seq, K] stays 3-D: the int8 GEMM kernel takes any rank, and without a
        # reshape between them FuseOps folds the float tail (scales, bias, GELU) into it.
        return relax.op.matmul(x, w, out_dtype=out_dtype)
    a = call.attrs
    return relax.op.nn.conv2d(x, w, a.strides, a.padding if padding is None else padding,
                              a.dilation, a.groups, a.data_layout, a.kernel_layout,
                              a.out_layout, out_dtype=out_dtype)


def channel_shape(call: relax.Call, n: int) -> list[int]:
    """Shape that broadcasts a per-output-channel vector against the call's output."""
    return [n] if call.op.name == "relax.matmul" else [1, n, 1, 1]


def emit_int8_static(bb: relax.BlockBuilder, call: relax.Call, wq: np.ndarray,
                     out_scale: np.ndarray, act: tuple[float, int, str],
                     bias: np.ndarray | None) -> relax.Expr:
    """quantize x -> integer contraction (int32) -> minus zero-point term -> float, with the
    combined scale ``s_x * s_w`` (and a bias correction) applied in one elementwise tail."""
    scale, zero, mode = act
    lo, hi = (0, 255) if mode == "uint8-asym" else (-127, 127)
    xq = relax.op.round(relax.op.divide(call.args[0], const(scale, _F32)))
    if zero:
        xq = relax.op.add(xq, const(float(zero), _F32))
    xq = bb.emit(relax.op.astype(clip(xq, lo, hi), ACT_DTYPE[mode]))
    padding = None
    if zero and call.op.name != "relax.matmul" and any(int(p) for p in call.attrs.padding):
        top, left, bottom, right = (int(p) for p in call.attrs.padding)
        xq = bb.emit(relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right],
                                     pad_value=float(zero)))  # pad with the code of 0.0
        padding = [0, 0, 0, 0]
    acc = bb.emit(contract(call, xq, const(wq), "int32", padding))
    n = wq.shape[-1] if call.op.name == "relax.matmul" else wq.shape[0]
    if zero:
        axes = 0 if call.op.name == "relax.matmul" else (1, 2, 3)
        colsum = wq.astype(np.int64).sum(axis=axes) * zero
        acc = relax.op.subtract(acc, const(colsum.reshape(channel_shape(call, n)), "int32"))
    y = relax.op.multiply(relax.op.astype(acc, _F32),
                          const((scale * out_scale).reshape(channel_shape(call, n)), _F32))
    if bias is not None:
        y = relax.op.add(y, const(bias.reshape(channel_shape(call, n)), _F32))
    return y


def emit_int8_dynamic(bb: relax.BlockBuilder, call: relax.Call, wq: np.ndarray,
                      w_scale: np.ndarray, per_token: bool) -> relax.Expr:
    """Symmetric int8 activation with its scale computed at run time: max |x| per token (last
    axis; matmul) or per tensor, floored so an all-zero input gives zeros, not NaN."""
    x = call.args[0]
    is_matmul = call.op.name == "relax.matmul"
    amax = relax.op.max(relax.op.abs(x), axis=-1 if per_token and is_matmul else None,
                        keepdims=True)
    s = bb.emit(relax.op.maximum(relax.op.divide(amax, const(127.0, _F32)),
                                 const(1e-30, _F32)))
    xq = clip(relax.op.round(relax.op.divide(x, s)), -127, 127)
    acc = bb.emit(contract(call, bb.emit(relax.op.astype(xq, "int8")), const(wq), "int32"))
    n = wq.shape[-1] if is_matmul else wq.shape[0]
    ws = const(w_scale.reshape(channel_shape(call, n)), _F32)
    return relax.op.multiply(relax.op.multiply(relax.op.astype(acc, _F32), s), ws)


def emit_cast(bb: relax.BlockBuilder, call: relax.Call, w: np.ndarray, dtype: str) -> relax.Expr:
    """Weights stored and the contraction computed in ``dtype``; result back to float32."""
    x = bb.emit(relax.op.astype(call.args[0], dtype))
    w16 = bb.normalize(relax.op.astype(const(w, _F32), dtype))
    return relax.op.astype(bb.emit(contract(call, x, w16, dtype)), _F32)


def _dequant(tensors, out_shape, to_rc, group: int) -> te.Tensor:
    """TE stage: float weights from packed nibbles (``to_rc`` maps an output index to the
    packed matrix's (row, column)), tagged for kernel rules."""
    packed, scale = tensors[:2]
    offset = tensors[2] if len(tensors) > 2 else None

    def value(*index):
        k, j = to_rc(*index)
        q = ((packed[k // 2, j].astype("int32") >> ((k % 2) * 4)) & 15).astype(_F32)
        g = k // group
        return (q - 8.0) * scale[g, j] if offset is None else q * scale[g, j] + offset[g, j]

    return te.compute(out_shape, value, name="dequant", attrs={"schedule_rule": DEQUANT_RULE})


def _cpu() -> bool:
    """CPU targets (and no target) get ``_int4_matmul``'s panel layout and group-factored
    matmul; GPU targets keep ``x @ dequant(W)``, the form dlight's GPU rules recognize."""
    target = tvm.target.Target.current(allow_none=True)
    return target is None or "gpu" not in target.keys


def int4_prim_func(call: relax.Call, x_shape, w_shape, arrays, group: int) -> tirx.PrimFunc:
    """``x @ dequant(W)`` (x flattened to 2-D) or ``conv2d(x, dequant(W))`` as one PrimFunc,
    so the packed weight stays packed in the IR (FoldConstant cannot fold it back)."""
    tensors = [te.placeholder(a.shape, str(a.dtype), n)
               for a, n in zip(arrays, ["packed", "scale", "offset"], strict=False)]
    x = te.placeholder(x_shape, _F32, "x")
    if call.op.name == "relax.matmul" and _cpu():
        y = int4.grouped_matmul(x, tensors, w_shape[0], w_shape[1], group)
    elif call.op.name == "relax.matmul":
        w = _dequant(tensors, tuple(w_shape), lambda k, j: (k, j), group)
        r = te.reduce_axis((0, w_shape[0]), "k")
        y = te.compute((x_shape[0], w_shape[1]), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r),
                       name="dequant_matmul", attrs={"schedule_rule": DEQUANT_MATMUL_RULE})
    else:
        kh, kw = w_shape[2:]
        w = _dequant(tensors, tuple(w_shape), lambda o, i, h, v: ((i * kh + h) * kw + v, o),
                     group)
        a = call.attrs
        strides, pad, dil = ([int(v) for v in a.strides], [int(v) for v in a.padding],
                             [int(v) for v in a.dilation])
        y = (topi.nn.conv2d_nchw(x, w, strides, pad, dil, _F32) if int(a.groups) == 1 else
             topi.nn.group_conv2d_nchw(x, w, strides, pad, dil, int(a.groups), _F32))
    return te.create_prim_func([x, *tensors, y])


def emit_int4(bb: relax.BlockBuilder, call: relax.Call, arrays: list[np.ndarray],
              w_shape: tuple[int, ...], group: int) -> relax.Expr:
    """``call_tir`` of the fused dequant-matmul (or dequant-conv) PrimFunc; a matmul input of
    rank > 2 is flattened to rows and the result reshaped back."""
    x = call.args[0]
    x_shape = [int(d) for d in x.ty.shape.values]
    out_shape = [int(d) for d in call.ty.shape.values]
    if call.op.name == "relax.matmul":
        rows = int(np.prod(x_shape[:-1]))
        if len(x_shape) != 2:
            x = bb.emit(relax.op.reshape(x, [rows, x_shape[-1]]))
        x_shape, ty_shape = [rows, x_shape[-1]], [rows, out_shape[-1]]
        name = "dequant_matmul_int4"
        arrays = int4.cpu_layout(arrays, w_shape[1]) if _cpu() else arrays
    else:
        ty_shape, name = out_shape, "dequant_conv2d_int4"
    func = int4_prim_func(call, x_shape, w_shape, arrays, group)
    gv = bb.add_func(func.without_attr("global_symbol"), name)  # te names every func "main"
    y = bb.emit(relax.call_tir(gv, [x, *(const(a) for a in arrays)],
                               out_ty=relax.TensorType(ty_shape, _F32)))
    return relax.op.reshape(y, out_shape) if ty_shape != out_shape else y


@relax.expr_functor.mutator
class Rewriter(relax.PyExprMutator):
    """Replaces the value of each planned binding, keeping its variable (same type)."""

    def __init__(self, mod: tvm.IRModule, plans: list[tuple[relax.Var, Any]]):
        super().__init__(mod)
        self.plans = plans

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        fn = next((f for v, f in self.plans if v.same_as(binding.var)), None)
        if fn is None:
            super().visit_var_binding_(binding)
            return
        call = self.visit_expr(binding.value)
        value = self.builder_.normalize(fn(self.builder_, call))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
