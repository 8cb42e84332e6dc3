"""NCHWc layout for CPU convolutions: activations ``[N, C / b, H, W, b]`` with ``b`` = the fp32
vector lanes (8 on AVX2, 16 on AVX-512, 4 on NEON), weights pre-packed ``[O / b, I / g, KH, KW,
b]`` at compile time.

In NCHW a conv vectorizes along the output width (needs widths that are multiples of the
vector: ResNet's 7 and 14 are not, and stride 2 gathers) or along output channels with a
broadcast of each input pixel (a depthwise conv has no channel reuse, so it stays scalar).
In NCHWc every conv, depthwise included, and every pool is one vector per output pixel block,
read and written contiguously, whatever the map size. TVM's ``ConvertLayout`` propagates the
layout through the element-wise ops, adds and pools between convs, so transforms remain only
where the layout cannot follow (a conv whose channels are not multiples of ``b``, the head).

The pass runs before legalization: the frontend's ReLU6 (``call_tir`` of maximum/minimum with a
scalar) becomes Relax ops again so the layout can flow through it, then ``ConvertLayout``,
then constant folding (the weight transforms), then each NCHWc conv becomes a TE compute
that ``Conv2d`` schedules (``conv2d.py``: channels mode over 5-D outputs).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from tvmcompress.schedules.cpu import common, winograd
from tvmcompress.schedules.cpu.int8_pack import int8_features, nchwc_conv
from tvmcompress.schedules.cpu.pack_conv import pack_np, padded_window, unpack_np

logger = logging.getLogger(__name__)


def block_width(target: Target) -> int:
    """Channels per block: one fp32 vector."""
    return common.lanes(target, "float32")


def nchwc_conv2d(data: te.Tensor, weight: te.Tensor, strides, padding, dilation,
                 groups: int, out_dtype: str | None = None) -> te.Tensor:
    """``out[n, o // b, y, x, o % b]`` of data ``[N, C / b, H, W, b]`` and weight
    ``[O / b, I / groups, KH, KW, b]``. Dense convs reduce over (ic block, ky, kx, ic lane),
    so the innermost reduction reads contiguous input; depthwise convs read the same lane.
    Plain NCHW data (a stem conv over 3 input channels, see ``_Rewriter._blocked``) gives the
    same blocked output from a dense conv. ``out_dtype`` (int32 for int8 depthwise and grouped
    convs): both operands are cast to it before they multiply."""
    if len(data.shape) == 4:
        return _nchw_in_conv2d(data, weight, strides, padding, dilation)
    n, b = int(data.shape[0]), int(data.shape[-1])
    if len(weight.shape) == 6:  # dense, [O / b, I / b, KH, KW, b (in), b (out)]: see pack_dense
        panels, in_blocks, kh, kw, _, _ = (int(d) for d in weight.shape)
        in_per_group = in_blocks * b
    else:
        panels, in_per_group, kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    data, out_h, out_w, ry, rx = padded_window(data, (kh, kw), strides, padding, dilation)
    shape = (n, panels, out_h, out_w, b)
    out_per_group = panels * b // groups

    def window(bi, c_block, y, x, lane):
        value = data[bi, c_block, y * sh + ry * dh, x * sw + rx * dw, lane]
        return value if out_dtype is None else value.astype(out_dtype)

    def w(*index):
        return weight[index] if out_dtype is None else weight[index].astype(out_dtype)

    if len(weight.shape) == 6:
        rco = te.reduce_axis((0, in_per_group // b), name="rco")
        rci = te.reduce_axis((0, b), name="rci")
        return te.compute(shape, lambda bi, o, y, x, v: te.sum(
            window(bi, rco, y, x, rci) * w(o, rco, ry, rx, rci, v),
            axis=[rco, ry, rx, rci]), name="conv2d_nchwc")
    if in_per_group == 1 and out_per_group == 1:  # depthwise
        return te.compute(shape, lambda bi, o, y, x, v: te.sum(
            window(bi, o, y, x, v) * w(o, 0, ry, rx, v), axis=[ry, rx]),
            name="conv2d_nchwc")
    rc = te.reduce_axis((0, in_per_group), name="rc")

    def grouped(bi, o, y, x, v):
        channel = (o * b + v) // out_per_group * in_per_group + rc
        return te.sum(window(bi, channel // b, y, x, channel % b) * w(o, rc, ry, rx, v),
                      axis=[rc, ry, rx])

    return te.compute(shape, grouped, name="conv2d_nchwc")


def _nchw_in_conv2d(data: te.Tensor, weight: te.Tensor, strides, padding,
                    dilation) -> te.Tensor:
    """Dense conv of NCHW ``data`` into NCHWc, weight ``[O / b, I, KH, KW, b]``."""
    n, in_ch = int(data.shape[0]), int(data.shape[1])
    panels, _, kh, kw, b = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    data, out_h, out_w, ry, rx = padded_window(data, (kh, kw), strides, padding, dilation)
    rc = te.reduce_axis((0, in_ch), name="rc")
    return te.compute((n, panels, out_h, out_w, b), lambda bi, o, y, x, v: te.sum(
        data[bi, rc, y * sh + ry * dh, x * sw + rx * dw] * weight[o, rc, ry, rx, v],
        axis=[rc, ry, rx]), name="conv2d_nchwc")


def pack_dense(weight: np.ndarray) -> np.ndarray:
    """[O / b, I, KH, KW, b] -> [O / b, I / b, KH, KW, b (in), b (out)]: the reduction order
    (in block, ky, kx, in lane) then walks the weight panel contiguously."""
    panels, in_ch, kh, kw, b = weight.shape
    return np.ascontiguousarray(weight.reshape(panels, in_ch // b, b, kh, kw, b)
                                .transpose(0, 1, 3, 4, 2, 5))


_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d,
          "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}
_UNARY = {f"relax.{n}" for n in ("nn.relu", "clip", "sigmoid", "tanh", "nn.silu", "nn.gelu",
                                 "nn.gelu_tanh", "nn.leakyrelu", "exp", "negative")}
_BINARY = {f"relax.{n}" for n in ("add", "subtract", "multiply", "divide", "maximum",
                                  "minimum")}


def _blocks(attrs, b: int) -> bool:
    """Whether a layout_transform's index map is NCHW -> NCHW{b}c (probed at one point)."""
    if len(attrs.index_map.initial_indices) != 4:
        return False
    try:
        mapped = attrs.index_map.map_indices([0, b + 3, 5, 7])
        return [int(i) for i in mapped] == [0, 1, 5, 7, 3]
    except (TypeError, ValueError, tvm.TVMError):
        return False


def _blocked_const(expr: relax.Expr, b: int) -> relax.Expr | None:
    """A constant operand of a tail op in NCHW{b}c: scalars as they are, per-channel
    ``[1, C, 1, 1]`` / ``[C, 1, 1]`` blocked; None for anything else."""
    if not isinstance(expr, Constant):
        return None
    value = expr.value.numpy()
    if value.size == 1:
        return relax.const(value.reshape(()), str(value.dtype)) if value.ndim else expr
    if value.ndim not in (3, 4) or value.shape[:-3] not in ((), (1,)) \
            or value.shape[-2:] != (1, 1) or value.shape[-3] % b:
        return None
    lead, c = value.shape[:-3], value.shape[-3]
    blocked = value.reshape(*lead, c // b, b, 1, 1)  # lanes to the end: [.., C / b, 1, 1, b]
    return relax.const(np.ascontiguousarray(np.moveaxis(blocked, -3, -1)))


def _float_conv(conv: relax.Call) -> bool:
    """Whether our NCHWc kernel computes ``conv``: float32/float16 data, weight and output."""
    dtype = str(conv.args[0].ty.dtype)
    return dtype in ("float32", "float16") and str(conv.args[1].ty.dtype) == dtype \
        and str(conv.attrs.out_dtype) in ("None", "", "void", dtype)


_REDUCTIONS = {f"relax.{n}" for n in ("max", "min", "sum", "mean", "prod")}


def _reduce(op: tvm.ir.Op, x: relax.Expr, axis=None, keepdims: bool = False) -> relax.Call:
    """The Relax reduction ``op`` of ``x``, built by the op's own constructor."""
    return getattr(relax.op, op.name[len("relax."):])(x, axis=axis, keepdims=keepdims)


def _reduce_attrs(op: tvm.ir.Op):
    """Attrs of ``op`` over all axes, keepdims off."""
    return _reduce(op, relax.Var("t", relax.TensorType([1], "float32"))).attrs


def _axis_const(param: relax.Expr, shape: list[int] | None, axis: int):
    """A quantization parameter (constant scalar, or 1-D along ``axis``) as a numpy array that
    broadcasts against ``shape``, with its dtype; None when it is neither."""
    if not isinstance(param, Constant) or shape is None:
        return None
    value = param.value.numpy()
    if value.size == 1:
        return value.reshape(()), str(value.dtype)
    axis = axis % len(shape)
    if value.ndim != 1 or value.shape[0] != shape[axis]:
        return None
    return value.reshape([-1 if a == axis else 1 for a in range(len(shape))]), str(value.dtype)


def _scalar(value, dtype) -> Constant:
    """A clip bound (a PrimValue wrapping a number) as a scalar constant of ``dtype``."""
    value = getattr(value, "value", value)
    number = np.array(float(getattr(value, "value", value))).astype(str(dtype))
    return relax.const(number, str(dtype))


def _int8_grouped_conv(conv: relax.Call) -> bool:
    """Whether ``conv`` is a grouped (depthwise) conv of 8-bit data and weights into int32,
    which ``nchwc_conv2d`` computes (``int8_pack`` leaves these to this pass)."""
    return int(conv.attrs.groups) > 1 and str(conv.args[0].ty.dtype) in ("int8", "uint8") \
        and str(conv.args[1].ty.dtype) in ("int8", "uint8") \
        and str(conv.attrs.out_dtype) == "int32"


def _is_scalar_const(expr: relax.Expr) -> bool:
    return isinstance(expr, Constant) and len(expr.value.shape) == 0


@mutator
class _Rewriter(PyExprMutator):
    """``mode`` "prepare": ops ConvertLayout cannot move into NCHWc become ones it can
    (frontend ``call_tir(maximum|minimum, (x, scalar))`` and ``clip`` -> Relax maximum/minimum;
    quantize/dequantize -> their element-wise ops; per-tensor scales -> 0-d tensors; lower-rank
    constants -> rank 4); "sink": a transform into NCHWc of an NCHW conv's output (and its
    element-wise/pool tail) becomes that conv writing NCHWc; "pad": typed pad values for
    layout transforms; "conv": NCHWc conv2d -> ``call_te(nchwc_conv2d)``, integer convs ->
    ``int8_pack.nchwc_conv``."""

    def __init__(self, mod: tvm.IRModule, mode: str, layout: str, func=None,
                 target: Target | None = None):
        super().__init__(mod)
        self.mod_, self.mode, self.layout, self.target = mod, mode, layout, target
        self.features = int8_features(target) if target is not None else ()
        self.var2val, self.uses = {}, {}
        if func is not None and mode == "sink":
            self.var2val = relax.analysis.get_var2val(func)
            for block in func.body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    for var, users in relax.analysis.udchain(block).items():
                        self.uses[var] = len(users)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if self.mode == "prepare":
            return self._prepare(call)
        if self.mode == "pad":
            return self._typed_pad(call)
        if self.mode == "sink":
            return self._sink(call)
        if call.op != tvm.ir.Op.get("relax.nn.conv2d") or self.layout not in (
                call.attrs.data_layout, call.attrs.out_layout):
            return call
        attrs, (data, weight) = call.attrs, call.args
        out_dtype = None
        if attrs.data_layout == self.layout:  # else NCHW data from _blocked: weight packed
            if _int8_grouped_conv(call):  # int8 depthwise: our kernel, int32 sums
                out_dtype = "int32"
            elif not _float_conv(call):  # ConvertLayout moved every conv
                packed = nchwc_conv(self.builder_, call, self.features)  # int8: tensorized
                return self._back_to_nchw(call) if packed is None else packed  # TOPI can't
            elif (fast := winograd.rewrite(self.builder_, call, self.target)) is not None:
                return fast
            elif isinstance(weight, Constant) and int(attrs.groups) == 1 \
                    and int(weight.value.shape[1]) % int(data.ty.shape[-1]) == 0:
                weight = relax.const(pack_dense(weight.value.numpy()))
        return self.builder_.call_te(
            nchwc_conv2d, data, weight, [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation],
            int(attrs.groups), out_dtype, primfunc_name_hint="conv2d_nchwc")

    def _back_to_nchw(self, call: relax.Call) -> relax.Expr:
        """A conv we have no NCHWc kernel for (integer, float64) as the NCHW conv it was,
        between layout transforms (legalization has no NCHWc conv for it)."""
        data, weight = call.args
        b, attrs = int(data.ty.shape[-1]), call.attrs
        nchw = relax.op.layout_transform(data, lambda n, c, h, w, v: (n, c * b + v, h, w))
        if isinstance(weight, Constant):  # a constant again, for int8_pack's second run
            blocked = weight.value.numpy()
            oihw = relax.const(unpack_np(blocked), str(blocked.dtype))
        else:
            oihw = self.builder_.emit(relax.op.layout_transform(
                weight, lambda o, i, kh, kw, v: (o * b + v, i, kh, kw)))
        out = self.builder_.emit(relax.op.nn.conv2d(
            self.builder_.emit(nchw), oihw, attrs.strides, attrs.padding,
            attrs.dilation, attrs.groups, out_dtype=attrs.out_dtype))
        return relax.op.layout_transform(out, lambda n, c, h, w: (n, c // b, h, w, c % b))

    def _sink(self, call: relax.Call) -> relax.Expr:
        """``layout_transform(tail(conv(x)))`` NCHW -> NCHWc: the conv writes NCHWc and its
        tail runs blocked (ConvertLayout keeps a conv whose input channels fill no vector,
        e.g. a 3-channel stem, in NCHW and moves its whole output map afterwards)."""
        if call.op != tvm.ir.Op.get("relax.layout_transform") or call.attrs.pad_value is not None:
            return call
        b = int(self.layout[4:-1])
        x = call.args[0]
        shape = common.static_shape(x)
        if shape is None or len(shape) != 4 or shape[1] % b or not _blocks(call.attrs, b):
            return call
        blocked = self._blocked(x, b)
        return call if blocked is None else blocked

    def _blocked(self, var: relax.Expr, b: int) -> relax.Expr | None:
        """``var`` (NCHW, read once) recomputed in NCHW{b}c, or None."""
        value = self.var2val.get(var) if isinstance(var, relax.Var) else None
        if self.uses.get(var) != 1 or not isinstance(value, relax.Call) \
                or not isinstance(value.op, tvm.ir.Op):
            return None
        name, args, attrs = value.op.name, value.args, value.attrs
        if name == "relax.nn.conv2d":
            return self._blocked_conv(value, b)
        if name in _POOLS:
            if attrs.layout != "NCHW" or attrs.out_layout != "NCHW":
                return None
            inner = self._blocked(args[0], b)
            return None if inner is None else self.builder_.emit(_POOLS[name](
                inner, attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation,
                attrs.ceil_mode, attrs.count_include_pad, layout=self.layout))
        if name in _UNARY:
            inner = self._blocked(args[0], b)
            return None if inner is None else self.builder_.emit(
                relax.Call(value.op, [inner, *args[1:]], attrs))
        if name in _BINARY and len(args) == 2:
            for i in (0, 1):
                const = _blocked_const(args[1 - i], b)
                if const is not None:
                    inner = self._blocked(args[i], b)
                    operands = [inner, const] if i == 0 else [const, inner]
                    return None if inner is None else self.builder_.emit(
                        relax.Call(value.op, operands, attrs))
        return None

    def _blocked_conv(self, conv: relax.Call, b: int) -> relax.Expr | None:
        attrs, (data, weight) = conv.attrs, conv.args
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW") \
                or int(attrs.groups) != 1 or not isinstance(weight, Constant) \
                or not _float_conv(conv):
            return None
        packed = pack_np(weight.value.numpy(), b)
        return self.builder_.emit(relax.op.nn.conv2d(
            self.visit_expr(data), relax.const(packed), attrs.strides, attrs.padding,
            attrs.dilation, 1, data_layout="NCHW", kernel_layout=f"OIHW{b}o",
            out_layout=self.layout, out_dtype=attrs.out_dtype))

    def _scalar_reduction(self, call: relax.Call) -> relax.Expr:
        """A reduction of a whole 4-D tensor kept as ``[1, 1, 1, 1]`` (a per-tensor scale)
        reduces to a 0-d tensor first: over NCHWc, ConvertLayout would keep it as a 5-D
        ``[1, 1, 1, 1, 1]`` "NCHW8c" tensor, whose transform back to NCHW cannot lower."""
        shape = common.static_shape(call)
        axes = call.attrs.axis
        if not call.attrs.keepdims or not shape or any(d != 1 for d in shape) \
                or (axes is not None and len(axes) != len(shape)):
            return call
        whole = self.builder_.emit(relax.Call(call.op, call.args, _reduce_attrs(call.op)))
        return relax.op.reshape(whole, shape)

    def _global_pool(self, call: relax.Call) -> relax.Expr:
        """A reduction of a 4-D tensor over its spatial axes without keepdims (a global
        pool, ``mean(x, [2, 3])``) keeps them and drops them after: over NCHWc,
        ConvertLayout carried its 3-D result on as an "NC8c" tensor, and a reduction over
        its channels after it (a per-token dynamic quantization scale before the classifier)
        made layout transforms that cannot lower. A reshape stops the layout there, so the
        head runs in plain ``[N, C]``."""
        shape = common.static_shape(call.args[0])
        axes = call.attrs.axis
        if call.attrs.keepdims or shape is None or len(shape) != 4 or axes is None \
                or sorted(int(a) % 4 for a in axes) != [2, 3]:
            return call
        pooled = self.builder_.emit(_reduce(call.op, call.args[0], [2, 3], keepdims=True))
        return relax.op.reshape(pooled, shape[:2])

    def _channel_reduction(self, call: relax.Call) -> relax.Expr:
        """A reduction over the channels of a 4-D tensor with keepdims (a spatial attention
        map, ``mean(x, 1, keepdims=True)``) reduces without keepdims, then gets its unit
        channel axis back: a ``[N, 1, H, W]`` map cannot be blocked, and ConvertLayout's
        broadcast against it failed ("Cannot broadcast from 5 to 4")."""
        shape = common.static_shape(call.args[0])
        axes = call.attrs.axis
        if not call.attrs.keepdims or shape is None or len(shape) != 4 or axes is None \
                or [int(a) % 4 for a in axes] != [1]:
            return call
        return relax.op.expand_dims(self.builder_.emit(_reduce(call.op, call.args[0], [1])), [1])

    def _elementwise_qdq(self, call: relax.Call) -> relax.Expr:
        """``quantize``/``dequantize`` with constant parameters as the element-wise ops TVM
        legalizes them to (same operations, same order: bit-identical), which ConvertLayout
        moves into NCHWc; as they are, they pinned a QDQ model's unfolded layers to NCHW
        (a transform on each side)."""
        x, scale, zero = call.args
        shape, out = common.static_shape(x), str(call.attrs.out_dtype)
        params = [_axis_const(p, shape, int(call.attrs.axis)) for p in (scale, zero)]
        if shape is None or None in params:
            return call
        (s, s_dtype), (zp, _) = params
        if call.op == tvm.ir.Op.get("relax.quantize"):
            if out not in ("int8", "uint8") or str(x.ty.dtype) != "float32":
                return call
            info = np.iinfo(out)
            t = self.builder_.emit(relax.op.round(relax.op.divide(x, relax.const(s, s_dtype))))
            t = self.builder_.emit(relax.op.add(t, relax.const(zp.astype("float32"))))
            t = self.builder_.emit(relax.op.maximum(t, relax.const(float(info.min))))
            return relax.op.astype(relax.op.minimum(t, relax.const(float(info.max))), out)
        if out != "float32" or str(x.ty.dtype) not in ("int8", "uint8", "int32") \
                or s_dtype != "float32":
            return call
        t = self.builder_.emit(relax.op.subtract(relax.op.astype(x, "int32"),
                                                 relax.const(zp.astype("int32"))))
        return relax.op.multiply(relax.op.astype(t, "float32"), relax.const(s))

    def _broadcast_operands(self, call: relax.Call) -> relax.Expr:
        """Operands ConvertLayout cannot move into NCHWc, made ones it can: a computed
        ``[1, 1, 1, 1]`` operand (a dynamic quantization scale) becomes a 0-d tensor (TVM fails
        with "Cannot broadcast from 5 to 4"; a scalar follows any layout), a computed
        ``[N, 1, H, W]`` one is broadcast over the channels (``_channels``), and a constant of
        lower rank than the other operand (a ``[C, 1, 1]`` requantize scale) gets its leading
        unit axes (ConvertLayout only transforms operands of the layout's rank)."""
        args = list(call.args)
        ranks = [len(common.static_shape(a) or ()) for a in args]
        for i, arg in enumerate(args):
            shape = common.static_shape(arg)
            rank = max(r for j, r in enumerate(ranks) if j != i)
            if not shape or rank < len(shape):
                continue
            if isinstance(arg, Constant) and 1 < math.prod(shape) and len(shape) < rank == 4:
                value = arg.value.numpy()
                args[i] = relax.const(value.reshape((1,) * (rank - len(shape)) + value.shape),
                                      str(value.dtype))
            elif not isinstance(arg, Constant) and all(d == 1 for d in shape):
                args[i] = self.builder_.emit(relax.op.reshape(arg, []))
                ranks[i] = 0
            elif not isinstance(arg, Constant) and len(shape) == 4 and shape[1] == 1 \
                    and (channels := self._channels(args, i)) > 1:
                args[i] = self.builder_.emit(relax.op.broadcast_to(
                    arg, [shape[0], channels, shape[2], shape[3]]))
        return call if all(a is b for a, b in zip(args, call.args)) else \
            relax.Call(call.op, args, call.attrs)

    @staticmethod
    def _channels(args, i: int) -> int:
        """The channels of the 4-D operand other than ``args[i]`` (0: none): a computed
        ``[N, 1, H, W]`` operand (a spatial attention map) is broadcast over them first, as
        a blocked tensor cannot broadcast against an unblocked one ("Cannot broadcast from 5
        to 4"); FuseOps fuses the broadcast into its consumer."""
        others = [common.static_shape(a) for j, a in enumerate(args) if j != i]
        return max((o[1] for o in others if o and len(o) == 4), default=0)

    def _typed_pad(self, call: relax.Call) -> relax.Expr:
        """Legalization pads a bool tensor's layout transform with a number, which cannot
        lower; masks between convs (``where(x > t, ..)``) move as uint8 instead."""
        x = call.args[0]
        if call.op != tvm.ir.Op.get("relax.layout_transform") or str(x.ty.dtype) != "bool":
            return call
        as_bytes = self.builder_.emit(relax.op.astype(x, "uint8"))
        moved = self.builder_.emit(relax.op.layout_transform(as_bytes, call.attrs.index_map))
        return relax.op.astype(moved, "bool")

    def _prepare(self, call: relax.Call) -> relax.Expr:
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _BINARY:
            return self._broadcast_operands(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _REDUCTIONS:
            for rewrite in (self._scalar_reduction, self._global_pool, self._channel_reduction):
                if (reduced := rewrite(call)) is not call:
                    return reduced
            return call
        if call.op == tvm.ir.Op.get("relax.squeeze") and call.attrs.axis is not None:
            rank = len(common.static_shape(call.args[0]) or ())
            if rank and any(int(a) < 0 for a in call.attrs.axis):  # TVM's layout rule:
                return relax.op.squeeze(call.args[0],  # std::bad_alloc on a negative axis
                                        [int(a) % rank for a in call.attrs.axis])
        if call.op in (tvm.ir.Op.get("relax.quantize"), tvm.ir.Op.get("relax.dequantize")):
            return self._elementwise_qdq(call)
        if call.op == tvm.ir.Op.get("relax.clip"):  # no layout rule in ConvertLayout
            x, lo, hi = call.args
            low = self.builder_.emit(relax.op.maximum(x, _scalar(lo, x.ty.dtype)))
            return relax.op.minimum(low, _scalar(hi, x.ty.dtype))
        if call.op != tvm.ir.Op.get("relax.call_tir") or len(call.args[1].fields) != 2:
            return call
        name = call.args[0].name_hint
        x, bound = call.args[1].fields
        op = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}.get(
            name.rstrip("0123456789"))
        if op is None or not _is_scalar_const(bound) or not isinstance(x.ty, relax.TensorType) \
                or str(x.ty.dtype) != str(bound.value.dtype):
            return call
        return op(x, bound)


def _rewrite(mod: tvm.IRModule, mode: str, layout: str,
             target: Target | None = None) -> tvm.IRModule:
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            rewriter = _Rewriter(mod, mode, layout, func, target)  # sink: reads the bindings
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
            mod = rewriter.builder_.finalize()
    return relax.transform.DeadCodeElimination()(mod)


def to_nchwc(target: Target) -> tvm.transform.Pass:
    """Relax module pass: fp32 NCHW convs whose channels fill whole vectors run in NCHWc
    (CPU only; others are left to ``pack_weights``). If TVM cannot carry some model's graph
    through the layout change, the model keeps NCHW (slower convs, same results) and a
    warning names the failure: a faster layout is never worth a failed compile."""
    b = block_width(target)
    layout = f"NCHW{b}c"

    def blocked(mod: tvm.IRModule) -> tvm.IRModule:
        mod = _rewrite(mod, "prepare", layout)
        mod = relax.transform.ConvertLayout({
            "relax.nn.conv2d": [layout, f"OIHW{b}o"],
            # TVM's layout rule for it fails on a blocked input ("Layouts must have the
            # same size"): a transposed conv (U-Net upsampling) reads NCHW
            "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})(mod)
        mod = relax.transform.EliminateCommonSubexpr()(mod)  # one transform per tensor
        mod = _rewrite(mod, "sink", layout)
        mod = _rewrite(mod, "pad", layout)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.EliminateCommonSubexpr()(mod)
        return _rewrite(mod, "conv", layout, target)

    @tvm.transform.module_pass(opt_level=0, name="ToNCHWc")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not common.is_cpu(target) or b < 2:
            return mod
        try:
            return blocked(mod)
        except (RuntimeError, ValueError) as err:  # TVM's checks raise these
            lines = str(err).strip().splitlines()
            logger.warning("NCHW%dc layout failed on this model (%s); its convs run in NCHW",
                           b, lines[-1] if lines else type(err).__name__)
            return mod

    return _pass
