"""The bias/ReLU epilogue the sparse kernel absorbs, and the mutator that swaps layers out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvmcompress.passes._quant_plan import Layer


@dataclass
class Plan:
    """How to rewrite one layer: ``emit(bb, call)`` gives the new value, bound to ``final``
    (the last fused epilogue variable; None: the layer's own) with the ``skip`` bindings of the
    fused epilogue dropped."""

    emit: Callable
    final: relax.Var | None
    skip: tuple[relax.Var, ...]


def _users(func: relax.Function, var: relax.Var) -> list[relax.VarBinding]:
    """Bindings of ``var``'s dataflow block that use it (empty outside dataflow blocks)."""
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        if not any(b.var.same_as(var) for b in block.bindings):
            continue
        chain = relax.analysis.udchain(block)
        users = next((u for v, u in chain.items() if v.same_as(var)), [])
        return [b for b in block.bindings if any(b.var.same_as(u) for u in users)]
    return []


def _single_user(func, var, op: str) -> relax.VarBinding | None:
    """The one binding using ``var``, when ``var`` is internal to its block and that use is
    a call of ``op``."""
    if not isinstance(var, relax.DataflowVar):
        return None
    users = _users(func, var)
    if len(users) != 1 or not isinstance(users[0].value, relax.Call):
        return None
    call = users[0].value
    return users[0] if isinstance(call.op, tvm.ir.Op) and call.op.name == op else None


def _bias(call: relax.Call, var: relax.Var, layer: Layer) -> np.ndarray | None:
    """The per-output-channel vector of ``var + const`` (either order), or None."""
    a, b = call.args
    other = b if a.same_as(var) else a if b.same_as(var) else None
    if not isinstance(other, tvm.ir.expr.Constant) or str(other.ty.dtype) != "float32":
        return None
    value = other.value.numpy()
    n = layer.weight.shape[1] if layer.kind == "matmul" else layer.weight.shape[0]
    channel_axis = value.ndim - 1 if layer.kind == "matmul" else 1
    if value.size != n or (n > 1 and value.ndim and value.shape[channel_axis] != n):
        return None
    return value.reshape(n).astype(np.float32)


def epilogue(func: relax.Function, layer: Layer):
    """(bias, relu, (final var, skipped vars)) of the single-use ``+ bias`` / ``relu`` chain
    after the layer, as far as it goes."""
    bias, relu, last, fused = None, False, layer.var, []
    add = _single_user(func, last, "relax.add")
    if add is not None:
        bias = _bias(add.value, last, layer)
        if bias is not None:
            last = add.var
            fused.append(last)
    act = _single_user(func, last, "relax.nn.relu")
    if act is not None:
        relu = True
        last = act.var
        fused.append(last)
    return bias, relu, (fused[-1] if fused else None, tuple(fused))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plans: dict):
        super().__init__(mod)
        self.plans = plans
        self.skip = [v for p in plans.values() for v in p.skip]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = next((p for v, p in self.plans.items() if v.same_as(binding.var)), None)
        if plan is None:
            if not any(v.same_as(binding.var) for v in self.skip):
                super().visit_var_binding_(binding)
            return
        call = self.visit_expr(binding.value)
        value = self.builder_.normalize(plan.emit(self.builder_, call))
        var = binding.var if plan.final is None else plan.final
        self.builder_.emit_normalized(relax.VarBinding(var, value))


def rewrite(mod: tvm.IRModule, plans: dict) -> tvm.IRModule:
    """``mod`` with each planned layer of ``main`` replaced (epilogues folded in)."""
    rewriter = _Rewriter(mod, plans)
    func = rewriter.visit_expr(mod["main"])
    rewriter.builder_.update_func(mod.get_global_var("main"), func)
    return relax.transform.DeadCodeElimination()(rewriter.builder_.finalize())
