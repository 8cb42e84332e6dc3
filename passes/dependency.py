"""Channel-coupling groups of ``main``: which constant slices must shrink together.

An analysis, not a pass; shared by pruning passes. Every tracked tensor carries a *label* per
channel (a compact integer array of the tensor's rank, size 1 on axes that carry no channel
structure). A conv or a matmul with a constant weight makes fresh labels for its output
channels; the per-op rules in ``_coupling_rules.RULES`` carry labels through the graph and
unify them where channels are coupled (a residual ``add`` of two producers, the heads of
``q @ k^T`` and ``att @ v``). After the walk, each union-find class is one prunable *unit*
(a channel, a head, an FFN neuron); a :class:`Group` is the set of units one producer (or
several producers tied by residual adds) writes. Anything the rules cannot prove safe
(a model input or output, an op without a rule, a grouped conv, a norm over channels) marks
its units unsafe, with the reason; those groups are never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from tvmcompress.passes._coupling_rules import RULES
from tvmcompress.passes._coupling_tracer import Tracer, canonicalize


@dataclass
class Member:
    """A constant argument of a call whose slices belong to units: ``labels`` has the
    constant's rank and varies along at most one axis (``axis``; None if it does not)."""

    call: relax.Call
    arg: int
    labels: np.ndarray
    axis: int | None = None


@dataclass
class Group:
    """Units written by the same producer(s): pruned together, ranked together."""

    name: str
    layers: list[str]
    units: np.ndarray
    width: int
    reason: str | None = None
    channels: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> unit per channel

    @property
    def prunable(self) -> bool:
        return self.reason is None


@dataclass
class Coupling:
    """The analysis result: groups, constant members and the reshapes to re-shape."""

    groups: list[Group]
    members: list[Member]
    outputs: dict[relax.Call, np.ndarray]  # call -> resolved labels of its output
    layers: dict[str, relax.Call]          # layer name (conv2d0, matmul3) -> call

    def group(self, name: str) -> Group:
        """The group a layer (any of its producers' names) belongs to."""
        for g in self.groups:
            if name in g.layers:
                return g
        known = ", ".join(n for g in self.groups for n in g.layers)
        raise KeyError(f"No layer {name!r} produces a channel group; layers: {known}")


def varying_axis(labels: np.ndarray) -> list[int]:
    """Axes along which resolved ``labels`` change."""
    return [a for a in range(labels.ndim) if labels.shape[a] > 1
            and not np.all(labels == labels.take([0], axis=a))]


def analyze(mod: tvm.IRModule) -> Coupling:
    """Build the coupling groups of ``mod["main"]`` (a dataflow function of Relax ops).

    Run :func:`canonicalize` first (the pruning pass does): Clip's ``call_tir`` has no rule.
    """
    func = mod["main"]
    tracer = Tracer()
    for block in func.body.blocks:
        for binding in block.bindings:
            _visit_binding(tracer, binding)
    outputs = func.body.body
    for out in outputs.fields if isinstance(outputs, relax.Tuple) else [outputs]:
        tracer.unsafe(tracer.track(out), "reaches a model output")
    return _finish(tracer)


def _visit_binding(tracer: Tracer, binding) -> None:
    value = binding.value
    if isinstance(value, relax.Var):
        tracer.set(binding.var, tracer.track(value))
        return
    if isinstance(value, Constant):
        return
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
        for sub in getattr(value, "fields", None) or [getattr(value, "tuple_value", None)]:
            tracer.unsafe(tracer.track(sub), f"used by a {type(value).__name__}")
        return
    tracer.name_layer(value)
    rule = RULES.get(value.op.name)
    if rule is None:
        for arg in tracer.args(value):
            tracer.unsafe(tracer.track(arg), f"{value.op.name} has no pruning rule")
        tracer.set(binding.var, None)
        return
    tracer.set(binding.var, rule(tracer, value))
    tracer.outputs[value] = tracer.track(binding.var)


def _finish(tracer: Tracer) -> Coupling:
    """Resolve labels to units, check every label array is slice-able, build the groups."""
    roots = tracer.roots()
    unsafe: dict[int, str] = {}
    for labels, reason in tracer.unsafe_marks:
        for r in np.unique(roots[labels]):
            unsafe.setdefault(int(r), reason)
    arrays = [labels for _, _, labels in tracer.members] + [v for v in tracer.outputs.values()
                                                   if v is not None]
    for labels in arrays:
        if len(varying_axis(roots[labels])) > 1:
            for r in np.unique(roots[labels]):
                unsafe.setdefault(int(r), "channels mix across several axes (reshape)")
    for labels, axis in tracer.no_vary:
        if axis in varying_axis(roots[labels]):
            for r in np.unique(roots[labels]):
                unsafe.setdefault(int(r), "indexed (take) along its channel axis")
    members = []
    for call, arg, labels in tracer.members:
        res = roots[labels]
        axes = varying_axis(res)
        members.append(Member(call, arg, res, axes[0] if axes else None))
    outputs = {c: roots[v] for c, v in tracer.outputs.items() if v is not None}
    return Coupling(_groups(tracer, roots, unsafe), members, outputs, dict(tracer.layer_calls))


def _groups(tracer: Tracer, roots: np.ndarray, unsafe: dict[int, str]) -> list[Group]:
    """One group per set of producers that share units (residual adds tie them)."""
    groups: list[Group] = []
    owner: dict[int, Group] = {}
    for layer, ids in tracer.producers:
        units = roots[ids]
        found = next((owner[int(u)] for u in units if int(u) in owner), None)
        if found is None:
            order = list(dict.fromkeys(int(u) for u in units))
            found = Group(layer, [], np.array(order), len(units) // max(len(order), 1))
            groups.append(found)
            for u in order:
                owner[u] = found
        found.layers.append(layer)
        found.channels[layer] = units
    for g in groups:
        reasons = [unsafe[int(u)] for u in g.units if int(u) in unsafe]
        if reasons:
            g.reason = reasons[0]
        elif len(g.units) < 2:
            g.reason = "a single unit"
    return groups


__all__ = ["Coupling", "Group", "Member", "analyze", "canonicalize", "varying_axis"]
