"""Rewrite ``main`` with some coupling units removed: smaller constants, re-inferred shapes.

Every constant member loses the indices of removed units along its channel axis; reshapes whose
output carries channels get the new size on that axis; depthwise convs get the new group
count. All other calls are rebuilt by the mutator, so their shapes are inferred again.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmcompress.passes.dependency import Coupling, varying_axis


def kept_along(labels: np.ndarray, axis: int, removed: np.ndarray) -> np.ndarray:
    """Indices along ``axis`` of resolved ``labels`` whose unit is not removed."""
    line = labels[tuple(slice(None) if a == axis else 0 for a in range(labels.ndim))]
    return np.nonzero(~np.isin(line, removed))[0]


def _sliced_constants(coupling: Coupling, removed: np.ndarray) -> dict:
    consts: dict[relax.Call, dict[int, np.ndarray]] = {}
    for m in coupling.members:
        if m.axis is None:
            continue
        keep = kept_along(m.labels, m.axis, removed)
        if len(keep) == m.labels.shape[m.axis]:
            continue
        per_call = consts.setdefault(m.call, {})
        value = per_call.get(m.arg)
        if value is None:
            value = m.call.args[m.arg].value.numpy()
        per_call[m.arg] = np.ascontiguousarray(np.take(value, keep, axis=m.axis))
    return consts


def _new_shapes(coupling: Coupling, removed: np.ndarray) -> dict:
    shapes: dict[relax.Call, list[int]] = {}
    for call, labels in coupling.outputs.items():
        if call.op.name != "relax.reshape" or not varying_axis(labels):
            continue
        axis = varying_axis(labels)[0]
        keep = kept_along(labels, axis, removed)
        if len(keep) < labels.shape[axis]:
            new = [int(d) for d in call.ty.shape.values]
            new[axis] = len(keep)
            shapes[call] = new
    return shapes


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, consts: dict, shapes: dict):
        super().__init__(mod)
        self.consts, self.shapes = consts, shapes

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call not in self.consts and call not in self.shapes:
            return super().visit_call_(call)
        args = [self.visit_expr(a) for a in call.args]
        for i, value in self.consts.get(call, {}).items():
            args[i] = relax.const(value)
        if call in self.shapes:
            return relax.op.reshape(args[0], self.shapes[call])
        a = call.attrs
        if call.op.name == "relax.nn.conv2d" and int(a.groups) > 1:
            new_w = self.consts.get(call, {}).get(1)
            groups = int(new_w.shape[0]) if new_w is not None else int(a.groups)  # depthwise
            return relax.op.nn.conv2d(args[0], args[1], a.strides, a.padding, a.dilation, groups,
                                      a.data_layout, a.kernel_layout, a.out_layout, a.out_dtype)
        return relax.Call(call.op, args, a, call.ty_args)


def remove_units(mod: tvm.IRModule, coupling: Coupling, removed: np.ndarray) -> tvm.IRModule:
    """``mod`` with the units ``removed`` (resolved labels) cut out of ``main``."""
    removed = np.asarray(removed, dtype=np.int64)
    consts = _sliced_constants(coupling, removed)
    shapes = _new_shapes(coupling, removed)
    if not consts and not shapes:
        return mod
    rewriter = _Rewriter(mod, consts, shapes)
    gv = mod.get_global_var("main")
    rewriter.builder_.update_func(gv, rewriter.visit_expr(mod["main"]))
    return rewriter.builder_.get()
