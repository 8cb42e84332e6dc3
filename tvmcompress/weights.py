"""Weights in a file beside the library: lift ``main``'s weight constants into parameters.

By default an export embeds the weights in ``model.so``. With ``separate_weights`` the model is
rebuilt with every non-scalar constant of ``main`` turned into a trailing parameter (after the
``num_input`` real inputs, as TVM's ``keep_params_in_input`` import does) and the values saved
with ``tvm.runtime.save_param_dict_to_file`` to ``weights.params``: one library can then serve
other weights of the same shapes, and the runtimes (Python ``tc.runtime.load``, C++
``tvmcompress::Model``) load the file with ``runtime.LoadParamsFromFile`` and pass the tensors
after the inputs. The weights are lifted after the target's layout passes, i.e. in the layout the
kernels read (pre-packed), so the library computes exactly what the embedded export does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

WEIGHTS_FILE = "weights.params"


@mutator
class _LiftConstants(PyExprMutator):
    """Replace each non-scalar constant by a new parameter ``w<i>`` (one per constant)."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.params: list[relax.Var] = []
        self.values: dict[str, np.ndarray] = {}

    def visit_generic_const_(self, const: tvm.ir.GenericConst) -> relax.Expr:
        value = getattr(const, "value", None)
        value = value.numpy() if hasattr(value, "numpy") else None
        if value is None or value.ndim == 0:
            return const
        name = f"w{len(self.params)}"
        var = relax.Var(name, relax.TensorType(value.shape, str(value.dtype)))
        self.params.append(var)
        self.values[name] = value
        return var


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Return ``mod`` whose ``main`` takes its weights as trailing parameters, and the weights
    by parameter name (in parameter order)."""
    main = mod["main"]
    lifter = _LiftConstants(mod)
    body = lifter.visit_expr(main.body)
    num_input = len(main.params)
    func = relax.Function(list(main.params) + lifter.params, body, main.ret_ty,
                          main.is_pure, main.attrs, main.span)
    func = func.with_attr("num_input", num_input)
    out = mod.clone()  # compile never mutates its input
    out["main"] = func
    return out, lifter.values


def save_weights(values: dict[str, np.ndarray], path: Path) -> None:
    """Write weights in TVM's param-dict format (readable from C++ with
    ``runtime.LoadParamsFromFile``)."""
    tvm.runtime.save_param_dict_to_file(
        {name: tvm.runtime.tensor(np.ascontiguousarray(v)) for name, v in values.items()},
        str(path))


def load_weights(path: Path, names: list[str], device) -> list:
    """The weights in ``names`` order, on ``device``; ExportError names what is missing."""
    from tvmcompress.errors import ExportError

    if not Path(path).is_file():
        raise ExportError(f"Weights file {path} is missing: the library was exported with "
                          "separate weights; copy weights.params next to model.so")
    loaded = tvm.runtime.load_param_dict_from_file(str(path))
    missing = [n for n in names if n not in loaded]
    if missing:
        raise ExportError(f"Weights file {path} lacks {missing[:5]} (of {len(names)} weights): "
                          "it does not belong to this model.so")
    return [tvm.runtime.tensor(loaded[n].numpy(), device) for n in names]


def export_separately(ir: tvm.IRModule, preset, directory: Path) -> tuple[object, dict]:
    """Rebuild ``ir`` for ``preset`` with lifted weights, write ``weights.params`` into
    ``directory``; returns the executable and the manifest's ``weights`` entry."""
    from tvmcompress.schedules import build
    from tvmcompress.schedules.build import layout_passes

    target = preset.tvm_target
    with target:  # lift the weights as the kernels read them: packed at compile time, as embedded
        laid_out = tvm.transform.Sequential(layout_passes(target))(ir)
    lifted, values = lift_weights(laid_out)
    executable, _ = build(lifted, preset)
    save_weights(values, Path(directory) / WEIGHTS_FILE)
    return executable, {"file": WEIGHTS_FILE, "names": list(values),
                        "bytes": int(sum(v.nbytes for v in values.values()))}
