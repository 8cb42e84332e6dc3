"""Union-find over channel labels for the dependency analysis, and the IR clean-up it needs.

``canonicalize`` turns the importer's ``call_tir(maximum|minimum, (x, scalar))`` (ONNX Clip,
e.g. ReLU6) back into ``relax.maximum``/``relax.minimum``, so rules and the rewrite see an op
whose shapes are re-inferred, not a PrimFunc with fixed buffer shapes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

LAYER_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}
CLIP_TIR = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}


def shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape.values)


def _clip_op(call: relax.Call):
    """The relax op an importer-made ``call_tir(maximum*, (x, scalar const))`` computes."""
    if call.op != tvm.ir.Op.get("relax.call_tir"):
        return None
    name = call.args[0].name_hint.rstrip("0123456789")
    args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
    if name not in CLIP_TIR or len(args) != 2 or not isinstance(args[1], Constant) \
            or args[1].value.numpy().ndim != 0 or shape(args[0]) != shape(call):
        return None
    return CLIP_TIR[name]


@mutator
class _Canonicalize(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        op = _clip_op(call)
        if op is None:
            return super().visit_call_(call)
        x, bound = call.args[1].fields
        return op(self.visit_expr(x), bound)


def canonicalize(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with Clip's call_tir bindings in ``main`` turned into relax ops (or ``mod``)."""
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e)
                                    if isinstance(e, relax.Call) and _clip_op(e) else None)
    if not calls:
        return mod
    mutator_ = _Canonicalize(mod)
    mutator_.builder_.update_func(mod.get_global_var("main"), mutator_.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination(["main"])(mutator_.builder_.get())


class Tracer:
    """Union-find over channel labels plus what the rules record along the way."""

    def __init__(self):
        self.parent: list[int] = []
        self.tracks: dict[relax.Var, np.ndarray | None] = {}
        self.members: list[tuple[relax.Call, int, np.ndarray]] = []
        self.producers: list[tuple[str, np.ndarray]] = []
        self.unsafe_marks: list[tuple[np.ndarray, str]] = []
        self.no_vary: list[tuple[np.ndarray, int]] = []
        self.outputs: dict[relax.Call, np.ndarray | None] = {}
        self.layer_calls: dict[str, relax.Call] = {}
        self.names: dict[relax.Call, str] = {}

    def name_layer(self, call: relax.Call) -> None:
        kind = LAYER_OPS.get(call.op.name)
        if kind:
            name = f"{kind}{sum(n.startswith(kind) for n in self.layer_calls)}"
            self.layer_calls[name], self.names[call] = call, name

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        for x, y in np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0):
            rx, ry = self.find(int(x)), self.find(int(y))
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def track(self, expr) -> np.ndarray | None:
        return self.tracks.get(expr) if isinstance(expr, relax.Var) else None

    def set(self, var: relax.Var, labels: np.ndarray | None) -> None:
        self.tracks[var] = labels

    def args(self, call: relax.Call) -> list:
        out = []
        for a in call.args:
            out.extend(a.fields if isinstance(a, relax.Tuple) else [a])
        return out

    def unsafe(self, labels: np.ndarray | None, reason: str) -> None:
        if labels is not None:
            self.unsafe_marks.append((labels, reason))

    def member(self, call: relax.Call, arg: int, labels: np.ndarray) -> None:
        if labels.size > 1:
            self.members.append((call, arg, labels))

    def producer(self, call: relax.Call, n: int, reason: str | None = None) -> np.ndarray:
        ids = self.fresh(n)
        self.producers.append((self.names[call], ids))
        if reason:
            self.unsafe(ids, reason)
        return ids
