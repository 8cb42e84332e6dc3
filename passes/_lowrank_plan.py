"""Which layers LowRankSplit may split, how (matmul, channel or spatial split) and at what cost.

A layer is a ``matmul`` with a 2-D constant weight or an NCHW/OIHW ``conv2d`` with a constant
kernel; every other contraction is listed too, with the reason it stays whole. Costs are MACs
counted from static shapes: an estimate of latency, since default schedules are not tuned yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from tvmcompress.passes import _lowrank_math as lm

OPS = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d"}


@dataclass
class Layer:
    """One matmul/conv2d binding of ``main`` in program order; ``reason`` set when ineligible."""

    name: str
    var: str
    position: tuple[int, int]  # (block, binding) in main, stable across ToNonDataflow
    call: relax.Call
    weight: np.ndarray | None = None
    x_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    w_shape: tuple[int, ...] | None = None
    reason: str | None = None

    def macs(self) -> int:
        """MACs of the original layer, from static shapes (0 when unknown)."""
        if not (self.x_shape and self.out_shape and self.w_shape):
            return 0
        if self.kind == "matmul":
            return math.prod(self.out_shape) * self.x_shape[-1]
        return math.prod(self.out_shape) * math.prod(self.w_shape[1:])

    @property
    def kind(self) -> str:
        return OPS[self.call.op.name]


@dataclass
class Option:
    """One way to split a layer: ``mode``, its factorisation, full rank and cost per rank."""

    mode: str  # "matmul", "channel" or "spatial"
    factors: lm.Factors
    per_rank: int
    whitened: bool

    @property
    def full(self) -> int:
        return len(self.factors.s)


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (AttributeError, TypeError):
        return None


def _ineligible(call: relax.Call, kind: str) -> str | None:
    weight = call.args[1]
    if not isinstance(weight, Constant):
        return "weight is not a constant (activation x activation, or a runtime weight)"
    if weight.value.dtype not in ("float32", "float16", "float64"):
        return f"weight dtype {weight.value.dtype} is not float"
    if _shape(call.args[0]) is None or _shape(call) is None:
        return "shapes are not static"
    if kind == "matmul":
        return None if weight.value.numpy().ndim == 2 else "weight is not 2-D"
    attrs = call.attrs
    if int(attrs.groups) != 1:
        return f"grouped/depthwise conv (groups={int(attrs.groups)}) is left whole"
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return f"layout {attrs.data_layout}/{attrs.kernel_layout} is not NCHW/OIHW"
    return None


def find_layers(func: relax.Function) -> list[Layer]:
    """Every matmul/conv2d binding of ``func``, named ``<op><index>`` in program order."""
    layers: list[Layer] = []
    counts = dict.fromkeys(OPS.values(), 0)
    for b, block in enumerate(func.body.blocks):
        for j, binding in enumerate(block.bindings):
            call = binding.value
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name in OPS):
                continue
            kind = OPS[call.op.name]
            layer = Layer(f"{kind}{counts[kind]}", binding.var.name, (b, j), call)
            counts[kind] += 1
            layer.reason = _ineligible(call, kind)
            layer.x_shape, layer.out_shape = _shape(call.args[0]), _shape(call)
            layer.w_shape = _shape(call.args[1])
            if layer.reason is None:
                layer.weight = call.args[1].value.numpy()
            layers.append(layer)
    return layers


def options(layer: Layer, conv_mode: str, gram: np.ndarray | None) -> list[Option]:
    """The splits ``conv_mode`` allows for ``layer``; whitened by ``gram`` where given."""
    w = layer.weight.astype(np.float64)
    if layer.kind == "matmul":
        rows = math.prod(layer.out_shape[:-1])
        return [Option("matmul", lm.factorize(w, gram), rows * sum(w.shape), gram is not None)]
    o, i, kh, kw = w.shape
    batch, _, ho, wo = layer.out_shape
    found = []
    if conv_mode in ("channel", "auto") or kh * kw == 1 or min(kh, kw) == 1:
        per_rank = batch * ho * wo * (i * kh * kw + o)
        found.append(Option("channel", lm.factorize(lm.channel_matrix(w), gram), per_rank,
                            gram is not None))
    if conv_mode in ("spatial", "auto") and min(kh, kw) > 1:
        # kh x 1 conv keeps the input width (no W stride/padding), then 1 x kw conv.
        per_rank = batch * ho * (layer.x_shape[3] * i * kh + wo * o * kw)
        found.append(Option("spatial", lm.factorize(lm.spatial_matrix(w)), per_rank, False))
    return found


def split_kernels(option: Option, rank: int, kernel_shape) -> tuple[np.ndarray, np.ndarray]:
    """The two weights of a split at ``rank``: matmul factors or the two conv kernels."""
    a, b = option.factors.split(rank)
    if option.mode == "channel":
        return lm.channel_kernels(a, b, kernel_shape)
    if option.mode == "spatial":
        return lm.spatial_kernels(a, b, kernel_shape)
    return a, b


def max_paying_rank(option: Option, orig_macs: int, min_gain: float, round_to: int) -> int:
    """Largest multiple of ``round_to`` below full rank whose split costs at most
    ``min_gain`` of the original MACs; 0 when none does."""
    r = min(int(min_gain * orig_macs // option.per_rank), option.full - 1)
    return r // round_to * round_to
