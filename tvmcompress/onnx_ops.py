"""Relax converters for the quantized ONNX ops TVM 0.27's importer lacks.

QOperator models (onnxruntime's ``quantize_static(quant_format=QOperator)``, ``quantize_dynamic``
and MatMulNBits exporters) use QLinearConv, QLinearMatMul, ConvInteger and the com.microsoft
ops QGemm, QLinearAdd/Mul, QLinearConcat, QLinear(Global)AveragePool, QLinearSoftmax and
MatMulNBits. Convolutions and matmuls become integer ops with int32 accumulation and
onnxruntime's requantization; the ops around them (add, mul, pooling, softmax) compute in float
between a dequantize and a quantize, as onnxruntime's own kernels do, and reuse TVM's float
converters. Each converter has TVM's signature ``(bb, inputs, attr, params) -> relax.Expr``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx

from tvmcompress import qint
from tvmcompress.errors import UnsupportedModelError


def _conv_attrs(op: str, x: relax.Expr, attr: dict) -> dict:
    """Relax conv2d keywords from ONNX Conv attributes (2-D, explicit or VALID padding)."""
    if len(qint.shape_of(x)) != 4:
        raise UnsupportedModelError(f"{op}: only 2-D convolutions (rank-4 NCHW input) are "
                                    f"supported, got input shape {qint.shape_of(x)}")
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"{op}: auto_pad={auto_pad} is not supported; export with "
                                    "explicit pads")
    pads = list(attr.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else [0, 0, 0, 0]
    return {"strides": list(attr.get("strides", (1, 1))), "padding": pads,
            "dilation": list(attr.get("dilations", (1, 1))), "groups": int(attr.get("group", 1))}


def qlinear_conv(bb, inputs, attr, params):
    """y = requant(conv(x - zx, w - zw) + B, sx * sw / sy) + zy (per-channel sw allowed)."""
    x, sx, zx, w, sw, zw, sy, zy, bias = (inputs[i] for i in range(9))
    acc = qint.int_conv2d(x, zx, w, zw, _conv_attrs("QLinearConv", x, attr))
    if bias is not None:
        acc = relax.op.add(acc, qint.per_channel(bias, 4, 1))
    multiplier = relax.op.divide(relax.op.multiply(sx, qint.per_channel(sw, 4, 1)), sy)
    return qint.requantize(acc, multiplier, zy, qint.dtype_of(zy) if zy is not None else "uint8")


def conv_integer(bb, inputs, attr, params):
    """ConvInteger: int32 conv of zero-point-corrected 8-bit operands."""
    x, w, zx, zw = (inputs[i] for i in range(4))
    return qint.int_conv2d(x, zx, w, zw, _conv_attrs("ConvInteger", x, attr))


def matmul_integer(bb, inputs, attr, params):
    """MatMulInteger with 8-bit operands kept 8-bit (TVM's own widens them to int32 first)."""
    return qint.int_matmul(inputs[0], inputs[2], inputs[1], inputs[3])


def qlinear_matmul(bb, inputs, attr, params):
    """y = requant((a - za) @ (b - zb), sa * sb / sy) + zy."""
    a, sa, za, b, sb, zb, sy, zy = (inputs[i] for i in range(8))
    multiplier = relax.op.divide(relax.op.multiply(sa, sb), sy)
    return qint.requantize(qint.int_matmul(a, za, b, zb), multiplier, zy, qint.dtype_of(zy))


def qgemm(bb, inputs, attr, params):
    """com.microsoft QGemm: alpha * A'B' + C (C int32 at scale alpha*sa*sb); quantized output
    when y_scale is given, else float."""
    a, sa, za, b, sb, zb, c, sy, zy = (inputs[i] for i in range(9))
    if attr.get("transA", 0):
        a = bb.normalize(relax.op.permute_dims(a))
    if attr.get("transB", 0):
        b = bb.normalize(relax.op.permute_dims(b))
    acc = qint.int_matmul(a, za, b, zb)
    if c is not None:
        acc = relax.op.add(acc, c)
    alpha = relax.const(float(attr.get("alpha", 1.0)), "float32")
    scale = relax.op.multiply(relax.op.multiply(alpha, sa), sb)
    if sy is None:
        return relax.op.multiply(relax.op.astype(acc, "float32"), scale)
    out_dtype = qint.dtype_of(zy) if zy is not None else "uint8"
    return qint.requantize(acc, relax.op.divide(scale, sy), zy, out_dtype)


def _binary(op):
    def convert(bb, inputs, attr, params):
        a, sa, za, b, sb, zb, sc, zc = (inputs[i] for i in range(8))
        value = op(qint.dequantize(a, sa, za), qint.dequantize(b, sb, zb))
        return qint.quantize(value, sc, zc)

    convert.__doc__ = f"com.microsoft QLinear{op.__name__.title()}: in float, then quantize."
    return convert


def qlinear_concat(bb, inputs, attr, params):
    """Inputs already at the output's scale and zero point are concatenated as integers."""
    sy, zy, rest = inputs[0], inputs[1], list(inputs)[2:]
    parts = []
    for x, sx, zx in zip(rest[0::3], rest[1::3], rest[2::3], strict=True):
        same = all(p is not None and q is not None and np.array_equal(
            qint.const_value(p), qint.const_value(q)) for p, q in ((sx, sy), (zx, zy)))
        parts.append(x if same else qint.quantize(qint.dequantize(x, sx, zx), sy, zy))
    return relax.op.concat(parts, axis=int(attr.get("axis", 0)))


def _float_op(onnx_op: str):
    """A QLinear wrapper around TVM's float converter: dequantize, ``onnx_op``, quantize.
    ``channels_last`` (pooling) transposes around the NCHW op; ``opset`` (softmax) picks the
    softmax semantics."""

    def convert(bb, inputs, attr, params):
        x, sx, zx, sy, zy = (inputs[i] for i in range(5))
        channels_last, opset = attr.get("channels_last", 0), int(attr.get("opset", 13))
        attr = {k: v for k, v in attr.items() if k not in ("channels_last", "opset")}
        value = bb.normalize(qint.dequantize(x, sx, zx))
        if channels_last:
            value = bb.normalize(relax.op.permute_dims(value, [0, 3, 1, 2]))
        result = tvm_onnx._get_convert_map()[onnx_op].get_converter(opset)(
            bb, [value], attr, params)
        if channels_last:
            result = relax.op.permute_dims(result, [0, 2, 3, 1])
        return qint.quantize(bb.normalize(result), sy, zy)

    convert.__doc__ = f"QLinear {onnx_op}: dequantize, TVM's float {onnx_op}, quantize."
    return convert


def matmul_nbits(bb, inputs, attr, params):
    """com.microsoft MatMulNBits: A @ dequant(B).T (+ bias), weights unpacked at import.

    The unpacked weights are constants, so TVM folds the dequantization into a float weight;
    keeping them packed needs the int4 pass's dequant-matmul kernel."""
    from tvmcompress.nbits import dequantize_nbits

    a, b, scales, zps, g_idx, bias = (inputs[i] for i in range(6))
    if g_idx is not None:
        raise UnsupportedModelError("MatMulNBits: g_idx (act-order) is not supported")
    arrays = [qint.const_value(t) if t is not None else None for t in (b, scales, zps)]
    if arrays[0] is None or arrays[1] is None or (zps is not None and arrays[2] is None):
        raise UnsupportedModelError("MatMulNBits: B, scales and zero_points must be constants")
    weight = dequantize_nbits(*arrays, k=int(attr["K"]), n=int(attr["N"]),
                              bits=int(attr.get("bits", 4)), block_size=int(attr["block_size"]))
    out = relax.op.matmul(a, relax.const(weight.astype(qint.dtype_of(a))))
    return out if bias is None else relax.op.add(out, bias)


CONVERTERS = {
    "QLinearConv": qlinear_conv,
    "ConvInteger": conv_integer,
    "MatMulInteger": matmul_integer,
    "QLinearMatMul": qlinear_matmul,
    "QGemm": qgemm,
    "QLinearAdd": _binary(relax.op.add),
    "QLinearMul": _binary(relax.op.multiply),
    "QLinearConcat": qlinear_concat,
    "QLinearAveragePool": _float_op("AveragePool"),
    "QLinearGlobalAveragePool": _float_op("GlobalAveragePool"),
    "QLinearSoftmax": _float_op("Softmax"),
    "MatMulNBits": matmul_nbits,
}
"""Our converters by ONNX op type, consulted before TVM's (``frontend._import``)."""
