"""QDQ folding: quantize(conv/matmul(dequantize(xq), W) + b) -> integer conv/matmul + requantize.

A QDQ model (QuantizeLinear/DequantizeLinear pairs around float ops, as onnxruntime's
``quantize_static`` writes by default) imports as float math with fake quantization, and the
weight's DequantizeLinear is folded into a float constant on import. This pass recovers the
integer weight from that constant (it lies on a grid ``scale * q``: per tensor or per output
channel), runs the conv/matmul on the 8-bit operands with int32 accumulation, adds the bias in
int32 and requantizes as onnxruntime's fused QLinearConv/QGemm does. A matmul of two
dequantized activations (attention) folds the same way. Matches it cannot fold stay float, with
the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from tvmcompress import qint
from tvmcompress.config import PassConfig, register_pass
from tvmcompress.errors import ConfigError
from tvmcompress.passes.record import record

# Weight grids onnxruntime's quantizer uses: symmetric int8 (+-127), 7-bit reduce_range (+-64),
# 8-bit asymmetric (255 steps over [min, max]); a scale is accepted only if it fits exactly.
_SYMMETRIC_STEPS = (127.0, 127.5, 64.0, 63.5)
_RANGE_STEPS = (255.0, 127.0)
# The imported float bias is ``bias_int * bias_scale`` rounded to float32, divided here by
# ``x_scale * w_scale`` (float32 again): a few ulps off its integer, which for the int32 biases
# of deep layers (1e5-2e6 in onnxruntime's ResNet-18) is more than 0.01. Two float32 ulps.
_F32_ULPS = 2.0**-22


@dataclass(frozen=True)
class FoldQDQConfig(PassConfig):
    """``tolerance``: how far (in quantization steps) a weight may lie off its integer grid."""

    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance < 0.5:
            raise ConfigError(f"FoldQDQConfig.tolerance must be in (0, 0.5) quantization steps, "
                              f"got {self.tolerance}")


def recover_int_weight(w: np.ndarray, axis: int, tolerance: float = 1e-3):
    """Integer weights ``q`` and scales ``s`` with ``w == s * q`` (per tensor, else per slice
    along ``axis``), or None when ``w`` lies on no 8-bit grid. ``q`` is the weight minus its
    zero point, so it may span [-255, 255]."""
    for per_channel in (False, True):
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis] if per_channel else 1, -1)
        scales = [_grid_scale(row, tolerance) for row in moved]
        if all(s is not None for s in scales):
            s = np.asarray(scales, dtype=np.float32)
            shape = [-1 if a == axis % w.ndim else 1 for a in range(w.ndim)]
            q = np.rint(w / (s.reshape(shape) if per_channel else s[0])).astype(np.int32)
            return q, (s if per_channel else s[:1])
    return None


def _grid_scale(values: np.ndarray, tolerance: float) -> float | None:
    absmax = float(np.abs(values).max())
    if absmax == 0.0:
        return 1.0
    span = float(max(values.max(), 0.0) - min(values.min(), 0.0))
    for s in [absmax / n for n in _SYMMETRIC_STEPS] + [span / n for n in _RANGE_STEPS]:
        s = float(np.float32(s))
        r = values / s
        if np.abs(r).max() <= 255.5 and np.abs(r - np.rint(r)).max() <= tolerance:
            return s
    return None


def fold_qdq(mod: tvm.IRModule, tolerance: float = 1e-3) -> tvm.IRModule:
    """Fold every eligible DQ -> conv2d/matmul (-> add bias) -> Q chain in ``mod``'s functions."""
    return _FoldQDQ(tolerance).run(mod)


@register_pass(FoldQDQConfig)
def fold_qdq_pass(config: FoldQDQConfig) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="FoldQDQ")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return fold_qdq(mod, config.tolerance)

    return _pass


class _FoldQDQ:
    """The patterns and their rewrites; ``count`` names layers in the order they are seen."""

    def __init__(self, tolerance: float):
        self.tolerance, self.count = tolerance, 0
        self.x, self.xs, self.xz = wildcard(), is_const(), is_const()
        self.b_act, self.bs, self.bz = wildcard(), is_const(), is_const()
        self.w, self.bias, self.ys, self.yz = is_const(), is_const(), is_const(), is_const()
        dq_x = is_op("relax.dequantize")(self.x, self.xs, self.xz)
        dq_b = is_op("relax.dequantize")(self.b_act, self.bs, self.bz)
        self.core = (is_op("relax.nn.conv2d")(dq_x, self.w) | is_op("relax.matmul")(dq_x, self.w)
                     | is_op("relax.matmul")(dq_x, dq_b))
        self.pre = self.core | is_op("relax.add")(self.core, self.bias)
        self.pattern = is_op("relax.quantize")(self.pre, self.ys, self.yz)

    def run(self, mod: tvm.IRModule) -> tvm.IRModule:
        mod = mod.clone()
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                func = rewrite_call(self.pattern, self.rewrite, func)
                mod[gv] = relax.analysis.remove_all_unused(func)
        return mod

    def rewrite(self, call: relax.Call, m: dict) -> relax.Expr:
        core = m[self.core]
        kind = "conv2d" if core.op.name == "relax.nn.conv2d" else "matmul"
        self.count += 1
        layer = f"{kind}_{self.count}"
        out_dtype = qint.dtype_of(call)
        if not _scalar(m[self.xs], m[self.xz], m[self.ys], m[self.yz]):
            return _skip(call, layer, "activation scales/zero points are not per tensor")
        if self.b_act in m:
            if not _scalar(m[self.bs], m[self.bz]):
                return _skip(call, layer, "second operand is not quantized per tensor")
            acc = qint.int_matmul(m[self.x], m[self.xz], m[self.b_act], m[self.bz])
            w_scale = qint.const_value(m[self.bs]).reshape(1)
        else:
            folded = self._weight(core, kind, m)
            if folded is None:
                return _skip(call, layer, "weight is not on an 8-bit grid")
            acc, w_scale = folded
        acc_scale = (qint.const_value(m[self.xs]) * w_scale).astype(np.float32)
        if self.bias in m:
            bias = qint.const_value(m[self.bias]) / acc_scale.reshape(
                _channel_shape(len(qint.shape_of(core)), kind, acc_scale.size))
            if (np.abs(bias - np.rint(bias)) > 0.01 + _F32_ULPS * np.abs(bias)).any():
                return _skip(call, layer, "bias is not on the int32 grid of x_scale * w_scale")
            acc = relax.op.add(acc, relax.const(np.rint(bias).astype(np.int32)))
        multiplier = (acc_scale / qint.const_value(m[self.ys])).astype(np.float32)
        multiplier = multiplier.reshape(_channel_shape(len(qint.shape_of(core)), kind,
                                                       multiplier.size))
        record("FoldQDQ", layer=layer, folded=True, operands=qint.dtype_of(m[self.x]),
               per_channel=w_scale.size > 1, out=out_dtype)
        return qint.requantize(acc, relax.const(multiplier), m[self.yz], out_dtype)

    def _weight(self, core: relax.Call, kind: str, m: dict):
        """Integer conv/matmul on the recovered weight, and the weight's scale(s)."""
        w = qint.const_value(m[self.w])
        axis = 0 if kind == "conv2d" else -1
        recovered = recover_int_weight(w, axis, self.tolerance)
        if recovered is None:
            return None
        q, scale = recovered
        w_int = relax.const(qint.narrow_int(q))
        if kind == "matmul":
            return qint.int_matmul(m[self.x], m[self.xz], w_int, None), scale
        attrs = core.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return None
        conv = {"strides": list(attrs.strides), "padding": list(attrs.padding),
                "dilation": list(attrs.dilation), "groups": int(attrs.groups)}
        return qint.int_conv2d(m[self.x], m[self.xz], w_int, None, conv), scale


def _scalar(*exprs: relax.Expr) -> bool:
    return all(qint.const_value(e).size == 1 for e in exprs)


def _channel_shape(ndim: int, kind: str, size: int) -> list[int]:
    """Broadcast shape of per-output-channel values: axis 1 of NCHW, the last axis of matmul."""
    if size == 1:
        return []
    return [size, 1, 1] if kind == "conv2d" else [size]


def _skip(call: relax.Call, layer: str, reason: str) -> relax.Call:
    record("FoldQDQ", layer=layer, folded=False, reason=reason)
    return call
