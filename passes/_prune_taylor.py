"""First-order Taylor importance (Molchanov et al. 2019) from gradients on the Relax IR itself.

Removing a unit sets every constant slice of its group to zero; to first order the loss then
changes by ``-sum(w * dL/dw)`` over those slices. The score of a unit is therefore, per member
constant (conv/matmul weight, bias, per-channel scale, consumer input slice),
``|sum over calibration samples and the slice of w * dL/dw|``, summed over the members.

Why gradients on the IR (``relax.transform.Gradient``) and not from PyTorch: the pass only sees
the IRModule, whatever the model came from (ONNX or torch), and the slices it scores are exactly
the members the dependency analysis found, so no name mapping back to a framework is needed.
The member constants become parameters of a copy of ``main`` that returns a scalar loss; its
adjoint is compiled for the host and run on the calibration data.

Loss: with ``targets`` (arrays per output, samples on axis 0), ``0.5 * ||y - t||^2``; without,
label-free ``0.5 * ||y||^2`` (the output energy: a unit whose removal would not change the
outputs to first order scores 0). The output energy is flat for models ending in a LayerNorm
(its output norm is fixed by gamma): give ``targets`` there, or the scores are rounding noise.
A unit whose activation is 0 on every sample gets zero
gradient on its consumers' slices and zero weights in its producer, so it scores 0 either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from tvmcompress.passes import _prune_grads
from tvmcompress.passes.dependency import Coupling, Group


def _lifted(coupling: Coupling) -> dict[tuple[relax.Call, int], relax.Var]:
    """One new parameter per constant argument that holds some member's slices."""
    out: dict[tuple[relax.Call, int], relax.Var] = {}
    for m in coupling.members:
        key = (m.call, m.arg)
        if m.axis is not None and key not in out and isinstance(m.call.args[m.arg], Constant):
            out[key] = relax.Var(f"w{len(out)}", m.call.args[m.arg].ty)
    return out


def _float_outputs(func: relax.Function) -> list[relax.Expr]:
    body = func.body.body
    fields = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    return [f for f in fields if isinstance(f.ty, relax.TensorType) and "float" in str(f.ty.dtype)]


def loss_module(func: relax.Function, lifted: dict, targets: bool) -> tvm.IRModule:
    """``loss(inputs..., weights..., [targets...])``: ``main`` with the lifted constants as
    parameters, returning ``0.5 * sum over float outputs of ||y (- t)||^2``."""
    outs = _float_outputs(func)
    tvars = [relax.Var(f"target{i}", y.ty) for i, y in enumerate(outs)] if targets else []
    bb = relax.BlockBuilder()
    with bb.function("loss", list(func.params) + list(lifted.values()) + tvars):
        with bb.dataflow():
            for block in func.body.blocks:
                for b in block.bindings:
                    value = b.value
                    if isinstance(value, relax.Call) and any((value, i) in lifted
                                                             for i in range(len(value.args))):
                        args = [lifted.get((value, i), a) for i, a in enumerate(value.args)]
                        value = bb.normalize(relax.Call(value.op, args, value.attrs,
                                                        value.ty_args))
                    bb.emit_normalized(relax.VarBinding(b.var, value))
            total = None
            for i, y in enumerate(outs):
                d = relax.op.subtract(y, tvars[i]) if targets else y
                term = bb.emit(relax.op.sum(relax.op.multiply(d, d)))
                total = term if total is None else bb.emit(relax.op.add(total, term))
            half = relax.const(0.5, str(outs[0].ty.dtype))
            gv = bb.emit_output(relax.op.multiply(total, half))
        bb.emit_func_output(gv)
    return bb.get()


class NoGradient(Exception):
    """Relax cannot differentiate ``main`` (an op without a gradient, no float output)."""


def _compile(mod: tvm.IRModule) -> relax.VirtualMachine:
    """Host build of the adjoint: TVM's CPU pipeline with our (guarded) schedule rules but
    without our inference layout passes (NCHWc, packed weights), which target forward graphs,
    not the bool masks and transposed convs of a backward graph."""
    from tvm.relax.backend import cpu_generic
    from tvm.s_tir import dlight as dl

    from tvmcompress.schedules.build import rules_for
    from tvmcompress.schedules.guard import Guarded
    from tvmcompress.targets import resolve_target

    target = resolve_target("host").tvm_target
    p = cpu_generic.pipeline
    fuse = [x for x in p.legalize_passes(target) if not isinstance(x, dl.ApplyDefaultSchedule)]
    passes = [*p.library_dispatch_passes(target), *fuse,
              dl.ApplyDefaultSchedule(*map(Guarded, rules_for(target))),
              *p.dataflow_lower_passes(target), *p.finalize_passes(target)]
    with target:
        executable = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(passes))
    return relax.VirtualMachine(executable, tvm.cpu())


def _adjoint(func: relax.Function, lifted: dict, targets: bool) -> relax.VirtualMachine:
    """The compiled adjoint of :func:`loss_module`: returns ``(loss, (dL/dw, ...))``."""
    _prune_grads.ensure()
    if lacking := _prune_grads.missing(func):
        raise NoGradient(f"no Relax gradient for {', '.join(lacking)}")
    if not _float_outputs(func):
        raise NoGradient("the model has no float output to differentiate")
    try:
        grad_mod = relax.transform.Gradient("loss", require_grads=list(lifted.values()))(
            loss_module(func, lifted, targets))
    except (tvm.error.InternalError, tvm.error.OpError, ValueError) as err:
        raise NoGradient(f"relax.transform.Gradient failed: {err}") from err
    adjoint = grad_mod["loss_adjoint"].with_attr("global_symbol", "main")
    return _compile(tvm.IRModule({"main": adjoint}))


def gradient_sums(mod: tvm.IRModule, coupling: Coupling, data: Any,
                  targets: Mapping[str, Any] | None = None) -> dict[tuple, tuple]:
    """``{(call, arg): (w, sum over calibration samples of dL/dw)}`` for every member constant.

    Raises :class:`NoGradient` when ``main`` cannot be differentiated (the caller falls back
    to another criterion); bad calibration data or targets raise ``InputError``.
    """
    from tvmcompress.errors import InputError
    from tvmcompress.passes.calibrate import _batches, check_calibration, load_calibration

    func = mod["main"]
    arrays = check_calibration(load_calibration(data), list(func.params))
    outs = _float_outputs(func)
    if targets is not None:
        if len(targets) != len(outs):
            raise InputError(f"PruneConfig.targets has {len(targets)} array(s); the model has "
                             f"{len(outs)} float output(s): give one per output, in order")
        arrays += [np.asarray(t, dtype=str(y.ty.dtype)) for t, y in
                   zip(targets.values(), outs, strict=True)]
    lifted = _lifted(coupling)
    vm = _adjoint(func, lifted, targets is not None)
    weights = [tvm.runtime.tensor(k[0].args[k[1]].value.numpy()) for k in lifted]
    sums = [np.zeros([int(d) for d in v.ty.shape.values]) for v in lifted.values()]
    n_in = len(func.params)
    for chunk in _batches(arrays, int(func.params[0].ty.shape.values[0])):
        feed = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in chunk[:n_in]]
        feed += weights + [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in chunk[n_in:]]
        for s, g in zip(sums, vm["main"](*feed)[1], strict=True):
            s += g.numpy()
    return {k: (w.numpy(), s) for k, w, s in zip(lifted, weights, sums, strict=True)}


def taylor_slices(coupling: Coupling, group: Group, grads: dict):
    """``(w * dL/dw, axis, unit_of_index)`` per member of ``group`` (see _prune_importance)."""
    local = {int(u): i for i, u in enumerate(group.units)}
    for m in coupling.members:
        if m.axis is None or (m.call, m.arg) not in grads:
            continue
        line = m.labels[tuple(slice(None) if a == m.axis else 0 for a in range(m.labels.ndim))]
        unit = np.array([local.get(int(u), -1) for u in line])
        if (unit >= 0).any():
            w, g = grads[(m.call, m.arg)]
            yield w.astype(np.float64) * g, m.axis, unit
