"""Per-op channel rules of the dependency analysis: how labels flow through each Relax op.

A rule ``rule(tracer, call) -> labels | None`` returns the output's compact label array (the
output's rank, size 1 on axes without channel structure; None: untracked). It records constant
members (``tracer.member``), unifies coupled labels and marks what it cannot handle unsafe.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant

from tvmcompress.passes._coupling_tracer import Tracer, shape

MAX_RESHAPE = 1 << 24  # label tensors materialized by a reshape, elements


def _align(labels: np.ndarray, rank: int) -> np.ndarray:
    return labels.reshape((1,) * (rank - labels.ndim) + labels.shape)


def _merge(tr: Tracer, arrays: list[np.ndarray]) -> np.ndarray:
    """Broadcast label arrays together, unifying the labels that meet."""
    out = np.broadcast_arrays(*arrays)
    for other in out[1:]:
        tr.unify(out[0], other)
    return np.ascontiguousarray(out[0])


def _const_member(tr: Tracer, call, i: int, labels: np.ndarray) -> None:
    """Slices of a broadcast constant operand that follow the output's channels."""
    const_shape = shape(call.args[i])
    lead = labels.ndim - len(const_shape)
    sub = labels[(0,) * lead] if lead > 0 else _align(labels, len(const_shape))
    for axis, size in enumerate(const_shape):
        if size == 1 and sub.shape[axis] > 1:
            sub = sub.take([0], axis=axis)
    tr.member(call, i, sub)


def _elementwise(tr: Tracer, call) -> np.ndarray | None:
    rank = len(shape(call))
    tracked = [_align(t, rank) for a in call.args if (t := tr.track(a)) is not None]
    if not tracked:
        return None
    labels = _merge(tr, tracked)
    for i, arg in enumerate(call.args):
        if isinstance(arg, Constant):
            _const_member(tr, call, i, labels)
        elif tr.track(arg) is None and isinstance(arg, relax.Var):
            other = (1,) * (rank - len(shape(arg))) + shape(arg)
            if any(s > 1 and n > 1 for s, n in zip(other, labels.shape, strict=True)):
                tr.unsafe(labels, f"{call.op.name} with {arg.name}, a model input or the "
                                  "result of an unmodeled op")
    return labels


def _conv2d(tr: Tracer, call) -> np.ndarray | None:
    x, w = call.args
    labels, a = tr.track(x), call.attrs
    layouts = (a.data_layout, a.kernel_layout, a.out_layout)
    out_c, channels = shape(call)[1], shape(x)[1]
    if not isinstance(w, Constant) or layouts != ("NCHW", "OIHW", "NCHW"):
        tr.unsafe(labels, "conv2d with a non-constant weight or a layout other than NCHW/OIHW")
        return tr.producer(call, out_c, "conv2d weight not constant / not NCHW").reshape(
            1, out_c, 1, 1)
    if labels is not None and labels.shape[1] > 1 and labels.shape[2:] != (1, 1):
        tr.unsafe(labels, "conv2d input labelled along a spatial axis")
    if a.groups == 1:
        if labels is not None:
            tr.member(call, 1, labels[:1, :, :1, :1])
        ids = tr.producer(call, out_c)
        tr.member(call, 1, ids.reshape(out_c, 1, 1, 1))
        return ids.reshape(1, out_c, 1, 1)
    if a.groups == channels == out_c and labels is not None and labels.shape[1] > 1:
        tr.member(call, 1, labels[:1, :, :1, :1].reshape(out_c, 1, 1, 1))  # depthwise: in=out
        return labels[:1, :, :1, :1]
    tr.unsafe(labels, f"grouped conv2d (groups={a.groups})")
    return tr.producer(call, out_c, f"grouped conv2d (groups={a.groups})").reshape(
        1, out_c, 1, 1)


def _matmul(tr: Tracer, call) -> np.ndarray | None:
    x, w = call.args
    rank = len(shape(call))
    if isinstance(w, Constant) and len(shape(w)) == 2:
        labels = tr.track(x)
        if labels is not None and any(s > 1 for s in labels.shape[:-1]):
            tr.unsafe(labels, "matmul input labelled on a non-feature axis")
        elif labels is not None:
            tr.member(call, 1, labels.reshape(-1, 1))
        n = shape(w)[1]
        tr.member(call, 1, (ids := tr.producer(call, n)).reshape(1, n))
        return ids.reshape((1,) * (rank - 1) + (n,))
    la, lb = tr.track(x), tr.track(w)
    if la is None or lb is None or isinstance(x, Constant) or isinstance(w, Constant):
        for labels in (la, lb):
            tr.unsafe(labels, "matmul of a tracked tensor with an untracked or constant one")
        return None
    la, lb = _align(la, rank), _align(lb, rank)
    _merge(tr, [la[..., :, :, None], lb[..., None, :, :]])  # contraction + batch axes (heads)
    for labels, axis in ((la, -1), (lb, -2)):  # the contracted axis collapses into its head
        tr.unify(labels, labels.take([0], axis=axis))
    return _merge(tr, [la.take([0], axis=-1), lb.take([0], axis=-2)])


def _reshape(tr: Tracer, call) -> np.ndarray | None:
    labels, out = tr.track(call.args[0]), shape(call)
    if labels is None:
        return None
    if math.prod(out) > MAX_RESHAPE:
        tr.unsafe(labels, "reshape of a tensor too large to trace")
        return None
    full = np.broadcast_to(labels, shape(call.args[0])).reshape(out)
    index = tuple(slice(None) if np.any(full != full.take([0], axis=a)) else slice(0, 1)
                  for a in range(full.ndim))
    return np.ascontiguousarray(full[index])


def _permute(tr: Tracer, call) -> np.ndarray | None:
    labels = tr.track(call.args[0])
    axes = call.attrs.axes
    return None if labels is None else labels.transpose(
        [int(a) for a in axes] if axes is not None else None)


def _take(tr: Tracer, call) -> np.ndarray | None:
    labels, index = tr.track(call.args[0]), call.args[1]
    if labels is None:
        return None
    axis = int(call.attrs.axis) % labels.ndim
    if not isinstance(index, Constant):
        tr.unsafe(labels, "take with a computed index")
        return None
    idx = index.value.numpy()
    if labels.shape[axis] > 1:
        tr.no_vary.append((labels, axis))
        return labels.take(idx, axis=axis)
    return labels.take(np.zeros_like(idx), axis=axis)


def _concat(tr: Tracer, call) -> np.ndarray | None:
    parts_in = tr.args(call)
    tracked = [tr.track(p) for p in parts_in]
    if all(t is None for t in tracked):
        return None
    rank, axis = len(shape(call)), int(call.attrs.axis) % len(shape(call))
    target = [max((t.shape[i] for t in tracked if t is not None), default=1) for i in range(rank)]
    parts = []
    for part, labels in zip(parts_in, tracked, strict=True):
        size = shape(part)[axis]
        if labels is None:
            labels = tr.fresh(size).reshape([size if i == axis else 1 for i in range(rank)])
            tr.unsafe(labels, "concatenated with an untracked tensor")
        target[axis] = size
        parts.append(np.broadcast_to(labels, target))
    return np.concatenate(parts, axis=axis)


def _spatial(tr: Tracer, call) -> np.ndarray | None:
    """Pooling (NCHW): channels pass through, nothing may be labelled spatially."""
    labels = tr.track(call.args[0])
    if labels is not None and (labels.shape[0] > 1 or labels.shape[2:] != (1, 1)
                               or call.attrs.layout != "NCHW"):
        tr.unsafe(labels, f"{call.op.name} over a labelled axis or layout {call.attrs.layout}")
        return None
    return labels


def _reduce(tr: Tracer, call) -> np.ndarray | None:
    labels = tr.track(call.args[0])
    if labels is None:
        return None
    axes = call.attrs.axis
    axes = list(range(labels.ndim)) if axes is None else [int(a) % labels.ndim for a in axes]
    if any(labels.shape[a] > 1 for a in axes):
        tr.unsafe(labels, f"{call.op.name} reduces over channels")
        return None
    return labels if call.attrs.keepdims else labels.reshape(
        [s for i, s in enumerate(labels.shape) if i not in axes])


def _axis_op(tr: Tracer, call) -> np.ndarray | None:
    """softmax / layer_norm: fine unless they normalize over labelled channels."""
    labels = tr.track(call.args[0])
    if labels is None:
        return None
    attr = call.attrs.axes if hasattr(call.attrs, "axes") else [call.attrs.axis]
    if any(labels.shape[int(a) % labels.ndim] > 1 for a in attr):
        tr.unsafe(labels, f"{call.op.name} normalizes over channels")
        return None
    return labels


def _unary(tr: Tracer, call) -> np.ndarray | None:
    return tr.track(call.args[0])


UNARY = ("nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "sigmoid", "tanh", "erf", "exp", "sqrt",
         "rsqrt", "negative", "abs", "square", "clip", "nn.leakyrelu", "astype", "nn.dropout",
         "isnan", "isinf", "logical_not")
RULES = {
    **{f"relax.{op}": _unary for op in UNARY},
    **{f"relax.{op}": _elementwise for op in ("add", "subtract", "multiply", "divide", "maximum",
                                               "minimum", "power", "where")},
    **{f"relax.nn.{op}": _spatial for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")},
    **{f"relax.{op}": _reduce for op in ("mean", "sum", "max", "min")},
    **{f"relax.nn.{op}": _axis_op for op in ("softmax", "log_softmax", "layer_norm", "rms_norm")},
    "relax.nn.conv2d": _conv2d,
    "relax.matmul": _matmul,
    "relax.reshape": _reshape,
    "relax.permute_dims": _permute,
    "relax.take": _take,
    "relax.concat": _concat,
}
