"""Relax gradients TVM 0.27 does not register, needed by the Taylor pruning criterion.

``relax.transform.Gradient`` differentiates any op with an ``FPrimalGradient`` attribute.
Transformers exported from ONNX use ``erf`` (exact GELU) and ``layer_norm`` and carry masks
through ``isnan``/``logical_and``; torchvision-style CNNs may use ``adaptive_avg_pool2d``.
:func:`ensure` registers those (each only when TVM has none, so a future TVM's own wins).
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.op import (
    broadcast_to,
    collapse_sum_to,
    divide,
    exp,
    expand_dims,
    mean,
    multiply,
    negative,
    reshape,
    sqrt,
    subtract,
)
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import no_grad, take_backward


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _const(value: float, like) -> relax.Constant:
    return relax.const(value, str(like.ty.dtype))


def _erf(_var, call, grad, _ctx):
    """d erf(x)/dx = 2 / sqrt(pi) * exp(-x^2)."""
    x = call.args[0]
    return [multiply(grad, multiply(_const(2 / math.sqrt(math.pi), x),
                                    exp(negative(multiply(x, x)))))]


def _layer_norm(_var, call, grad, _ctx):
    """x_hat = (x - mean) / sqrt(var + eps); y = x_hat * gamma + beta over ``axes``:
    dx = (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / sigma with g_hat = g * gamma."""
    x, gamma, beta = call.args
    axes, eps = [int(a) for a in call.attrs.axes], float(call.attrs.epsilon)
    centered = subtract(x, mean(x, axes, keepdims=True))
    sigma = sqrt(mean(multiply(centered, centered), axes, keepdims=True) + _const(eps, x))
    x_hat = divide(centered, sigma)
    g_hat = multiply(grad, gamma)
    dx = divide(subtract(subtract(g_hat, mean(g_hat, axes, keepdims=True)),
                         multiply(x_hat, mean(multiply(g_hat, x_hat), axes, keepdims=True))),
                sigma)
    return [dx, collapse_sum_to(multiply(grad, x_hat), _shape(gamma)),
            collapse_sum_to(grad, _shape(beta))]


def _adaptive_avg_pool2d(_var, call, grad, _ctx):
    """Global average pooling (output 1x1, NCHW): every input pixel gets grad / (H * W)."""
    x = call.args[0]
    out = _shape(call)
    if call.attrs.layout != "NCHW" or out[2:] != [1, 1]:
        raise ValueError("adaptive_avg_pool2d gradient: only global NCHW pooling is supported")
    h, w = _shape(x)[2:]
    return [divide(broadcast_to(grad, _shape(x)), _const(h * w, x))]


def _take(_var, call, grad, _ctx):
    """TVM's take gradient, extended to a scalar (0-d) index (``qkv[0]`` in attention): its
    legalization only handles 1-d indices, so the axis is restored and the index made 1-d."""
    x, index = call.args
    axis = call.attrs.axis
    if axis is not None and not _shape(index):
        grad, index = expand_dims(grad, int(axis)), reshape(index, [1])
    return [take_backward(grad, x, index, axis), no_grad(call.args[1])]


def _no_grad(_var, call, _grad, _ctx):
    return [no_grad(a) for a in call.args]


GRADIENTS = {"relax.erf": _erf, "relax.nn.layer_norm": _layer_norm,
             "relax.nn.adaptive_avg_pool2d": _adaptive_avg_pool2d,
             **{f"relax.{op}": _no_grad for op in ("isnan", "isinf", "logical_and", "logical_or",
                                                    "logical_not", "equal", "greater",
                                                    "greater_equal", "less_equal")}}


_done: list[bool] = []


def ensure() -> None:
    """Register every gradient of :data:`GRADIENTS` that TVM lacks, and the scalar-index
    ``take`` over TVM's (level 11 beats its level 10; same result for 1-d indices)."""
    if _done:
        return
    for name, fn in GRADIENTS.items():
        if tvm.ir.Op.get(name).get_attr("FPrimalGradient") is None:
            register_gradient(name, fn)
    register_gradient("relax.take", _take, level=11)
    _done.append(True)


def missing(func: relax.Function) -> list[str]:
    """Names of the ops in ``func`` that still have no gradient."""
    names: set[str] = set()
    relax.analysis.post_order_visit(func, lambda e: names.add(e.op.name) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return sorted(n for n in names if tvm.ir.Op.get(n).get_attr("FPrimalGradient") is None)
