"""Integer conv/matmul with int32 accumulation and requantization, as Relax expressions.

Shared by the quantized-ONNX converters (``onnx_ops``) and the QDQ folding pass. The operands
stay int8/uint8 so the kernels see 8-bit inputs; zero points are never subtracted from the
operands but corrected exactly afterwards in int32 (``sum((x-zx)(w-zw))`` expanded), and the
padding correction of a convolution is a constant convolution of ones that FoldConstant folds.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmcompress.errors import UnsupportedModelError

QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


def const_value(expr: relax.Expr | None) -> np.ndarray | None:
    """The numpy value of a constant expression, else None."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    return None


def is_zero(expr: relax.Expr | None) -> bool:
    """True when ``expr`` is absent or a constant that is all zeros (zero point 0)."""
    value = const_value(expr)
    return expr is None or (value is not None and not np.any(value))


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def shape_of(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def narrow_int(values: np.ndarray) -> np.ndarray:
    """``values`` as int8 when they fit (the 8-bit kernels' operand type), else int32."""
    if values.min() >= -128 and values.max() <= 127:
        return values.astype("int8")
    return values.astype("int32")


def qint_dtype(const: relax.Constant) -> str:
    return str(const.value.dtype)


def as_i32(expr: relax.Expr) -> relax.Expr:
    return relax.op.astype(expr, "int32")


def weight_minus_zp(w: relax.Expr, w_zp: relax.Expr | None, axis: int, what: str) -> relax.Expr:
    """Constant weights with their (per-tensor or per-``axis``) zero point subtracted."""
    w_np = const_value(w)
    if w_np is None:
        raise UnsupportedModelError(f"{what}: the weight must be a constant initializer")
    w_np = w_np.astype("int32")
    if w_zp is not None:
        zp = const_value(w_zp)
        if zp is None:
            raise UnsupportedModelError(f"{what}: the weight zero point must be a constant")
        zp = zp.astype("int32")
        if zp.size > 1:
            zp = zp.reshape([-1 if a == axis % w_np.ndim else 1 for a in range(w_np.ndim)])
        w_np = w_np - zp
    return relax.const(narrow_int(w_np))


def int_matmul(a, a_zp, b, b_zp) -> relax.Expr:
    """``(a - a_zp) @ (b - b_zp)`` in int32 with 8-bit operands; zero points scalar or per
    column of ``b`` (per row of ``a``: shape [M])."""
    if const_value(b) is not None and not is_zero(b_zp):
        folded = weight_minus_zp(b, b_zp, -1, "MatMul")
        if qint_dtype(folded) == "int8":  # else keep 8-bit b and correct for b_zp below
            b, b_zp = folded, None
    acc = relax.op.matmul(a, b, out_dtype="int32")
    if not is_zero(a_zp):
        za = as_i32(a_zp)
        if len(a_zp.ty.shape.values) == 1 and shape_of(a_zp)[0] > 1:
            za = relax.op.expand_dims(za, -1)
        acc = relax.op.subtract(acc, relax.op.multiply(
            za, relax.op.sum(as_i32(b), axis=[-2], keepdims=True)))
    if not is_zero(b_zp):
        zb = as_i32(b_zp)
        a_centered = as_i32(a) if is_zero(a_zp) else relax.op.subtract(as_i32(a), za)
        acc = relax.op.subtract(acc, relax.op.multiply(
            zb, relax.op.sum(a_centered, axis=[-1], keepdims=True)))
    return acc


def int_conv2d(x, x_zp, w, w_zp, conv_attrs: dict) -> relax.Expr:
    """``conv2d(x - x_zp, w - w_zp)`` in int32 with 8-bit operands, exact at padded borders:
    ``conv(x, w') - x_zp * conv(ones, w')`` where ``w' = w - w_zp`` is folded at import."""
    w_eff = weight_minus_zp(w, w_zp, 0, "Conv")
    acc = relax.op.nn.conv2d(x, w_eff, out_dtype="int32", **conv_attrs)
    if is_zero(x_zp):
        return acc
    ones = relax.const(np.ones([1, *shape_of(x)[1:]], dtype="int8"))
    window = relax.op.nn.conv2d(ones, w_eff, out_dtype="int32", **conv_attrs)
    return relax.op.subtract(acc, relax.op.multiply(as_i32(x_zp), window))


def per_channel(scale: relax.Expr, ndim: int, axis: int) -> relax.Expr:
    """A per-channel scale/zero point reshaped to broadcast along ``axis`` of a rank-``ndim``
    tensor; scalars and size-1 tensors are returned as they are."""
    if not scale.ty.shape.values or int(np.prod(shape_of(scale))) == 1:
        return scale
    return relax.op.reshape(scale, [-1 if a == axis % ndim else 1 for a in range(ndim)])


def requantize(acc, multiplier, y_zp, out_dtype: str) -> relax.Expr:
    """``saturate(round_half_even(acc * multiplier) + y_zp)``, as onnxruntime's
    MlasRequantizeOutput computes it (float32 multiply, then round to nearest even)."""
    scaled = relax.op.round(relax.op.multiply(relax.op.astype(acc, "float32"), multiplier))
    if not is_zero(y_zp):
        scaled = relax.op.add(scaled, relax.op.astype(y_zp, "float32"))
    low, high = QRANGE[out_dtype]
    return relax.op.astype(relax.op.clip(scaled, low, high), out_dtype)


def dequantize(x, scale, zp, axis: int = 1) -> relax.Expr:
    """Float32 value of a quantized tensor (ONNX DequantizeLinear)."""
    zp = zp if zp is not None else relax.const(0, dtype_of(x))
    return relax.op.dequantize(x, scale, zp, axis=axis, out_dtype="float32")


def quantize(x, scale, zp) -> relax.Expr:
    """ONNX QuantizeLinear with a scalar scale: divide, round half to even, saturate."""
    zp = zp if zp is not None else relax.const(0, "uint8")
    return relax.op.quantize(x, scale, zp, axis=-1, out_dtype=dtype_of(zp))
