"""Calibration: run the float module on user data and collect each layer's input range.

Robust by construction: the float Relax module itself is compiled for the host with its
layers' activation inputs added as extra outputs, so the statistics come from exactly the
graph being quantized (no second importer, no name mapping through onnxruntime).
Calibration data is a dict ``{input name: array}`` with samples on axis 0, an ``.npz`` path
holding the same, or an iterable of such dicts (concatenated on axis 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from tvmcompress.errors import ConfigError, InputError

MAX_VALUES = 1 << 20  # values kept per layer for percentile/entropy/MSE (random subsample)


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name)  # the importer sanitizes names the same way


def load_calibration(data: Any) -> dict[str, np.ndarray]:
    """Normalize the three accepted forms to ``{name: array with samples on axis 0}``."""
    if isinstance(data, str | Path):
        path = Path(data)
        if not path.is_file():
            raise ConfigError(f"QuantizeConfig.calibration: file {str(path)!r} does not exist")
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    if isinstance(data, Mapping):
        return {k: np.asarray(v) for k, v in data.items()}
    if isinstance(data, Iterable):
        batches = [load_calibration(b) for b in data]
        if not batches:
            raise InputError("QuantizeConfig.calibration is an empty iterable: give at least "
                             "one batch {input name: array}")
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    raise ConfigError(f"QuantizeConfig.calibration must be a dict of arrays, an .npz path or an "
                      f"iterable of dicts, got {type(data).__name__}")


def check_calibration(data: dict[str, np.ndarray], params: list[relax.Var]) -> list[np.ndarray]:
    """Arrays in parameter order, cast within their kind; errors name the input and the fix."""
    want = {_key(p.name): p for p in params}
    got = {_key(k): v for k, v in data.items()}
    if set(got) != set(want):
        raise InputError(f"Calibration inputs {sorted(data)} do not match the model's inputs "
                         f"{sorted(p.name for p in params)}: missing {sorted(set(want) - set(got))}"
                         f", unexpected {sorted(set(got) - set(want))}")
    arrays = []
    for key, param in want.items():
        arr, shape = got[key], [int(d) for d in param.ty.shape.values]
        dtype = np.dtype(str(param.ty.dtype))
        if arr.ndim != len(shape) or list(arr.shape[1:]) != shape[1:]:
            raise InputError(f"Calibration input {param.name!r} has shape {list(arr.shape)};"
                             f" expected [samples, {', '.join(map(str, shape[1:]))}] (the model "
                             f"takes {shape}; samples go on axis 0)")
        if arr.shape[0] == 0:
            raise InputError(f"Calibration input {param.name!r} has no samples (shape "
                             f"{list(arr.shape)}); give at least one")
        if arr.dtype.kind != dtype.kind and not (arr.dtype.kind in "iu" and dtype.kind in "iu"):
            raise InputError(f"Calibration input {param.name!r} has dtype {arr.dtype}; the "
                             f"model takes {dtype} (use .astype('{dtype}'))")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(f"Calibration input {param.name!r} holds {bad} NaN/Inf "
                             "value(s); remove or replace those samples")
        arrays.append(arr.astype(dtype))
    return arrays


def _batches(arrays: list[np.ndarray], batch: int) -> Iterable[list[np.ndarray]]:
    """Model-sized batches; the last one wraps around to the first samples (static shapes)."""
    n = arrays[0].shape[0]
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch) % n
        yield [a[idx] for a in arrays]


def _instrument(mod: tvm.IRModule, acts: list[relax.Expr]) -> tvm.IRModule:
    """``mod`` with ``main`` returning ``(original result, *acts)``; dataflow vars are bound to
    outputs. Other functions (the importer's helper kernels, e.g. for ONNX Pad) are kept."""
    func = mod["main"]
    outs: list[relax.Expr] = [a for a in acts]
    blocks = []
    for block in func.body.blocks:
        bindings = list(block.bindings)
        for b in block.bindings:
            for i, act in enumerate(acts):
                if act.same_as(b.var) and isinstance(b.var, relax.DataflowVar):
                    outs[i] = relax.Var(f"calib{i}", b.var.ty)
                    bindings.append(relax.VarBinding(outs[i], b.var))
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    body = relax.SeqExpr(blocks, relax.Tuple([func.body.body, *outs]))
    ret_ty = relax.TupleType([func.ret_ty, *(o.ty for o in outs)])
    new = relax.Function(func.params, body, ret_ty, func.is_pure, func.attrs)
    out = tvm.IRModule(mod.functions, attrs=mod.attrs)
    out["main"] = new
    return relax.transform.Normalize()(out)


class LayerStats:
    """Running range, per-channel input mean and a bounded random sample of one layer input."""

    def __init__(self, channel_axis: int, seed: int):
        self.axis, self.lo, self.hi = channel_axis, np.inf, -np.inf
        self.sum, self.count, self.values = 0.0, 0, []
        self._rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        finite = x[np.isfinite(x)]
        if finite.size:
            self.lo, self.hi = min(self.lo, finite.min()), max(self.hi, finite.max())
        axes = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
        self.sum = self.sum + np.nan_to_num(x, posinf=0, neginf=0).sum(axis=axes, dtype=np.float64)
        self.count += x.size // x.shape[self.axis]
        self.values.append(finite if finite.size <= MAX_VALUES // 8
                           else self._rng.choice(finite, MAX_VALUES // 8, replace=False))

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi))

    @property
    def mean(self) -> np.ndarray:
        return (self.sum / max(self.count, 1)).astype(np.float32)

    def sample(self) -> np.ndarray:
        v = np.concatenate(self.values) if self.values else np.zeros(0, np.float32)
        if v.size > MAX_VALUES:
            v = self._rng.choice(v, MAX_VALUES, replace=False)
        return v.astype(np.float32)


def run_with_outputs(mod: tvm.IRModule, acts: list[relax.Expr],
                     arrays: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Compile ``main`` for the host with ``acts`` as extra outputs and run it on ``arrays``
    (inputs in parameter order, samples on axis 0); yields the acts' values per batch.

    The one way passes observe intermediate tensors (quantize, pruning, low-rank whitening).
    """
    from tvmcompress.schedules import build
    from tvmcompress.targets import resolve_target

    func = mod["main"]
    executable, _ = build(_instrument(mod, acts), resolve_target("host"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for inputs in _batches(arrays, int(func.params[0].ty.shape.values[0])):
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in inputs])
        yield [value.numpy() for value in list(result)[1:]]


def collect(mod: tvm.IRModule, acts: list[relax.Expr], axes: list[int],
            data: Any) -> list[LayerStats]:
    """Run ``main`` on ``data`` and return one :class:`LayerStats` per act (``axes``: its
    channel axis, for the mean)."""
    arrays = check_calibration(load_calibration(data), list(mod["main"].params))
    stats = [LayerStats(axis, seed=i) for i, axis in enumerate(axes)]
    for values in run_with_outputs(mod, acts, arrays):
        for s, value in zip(stats, values, strict=True):
            s.add(value)
    return stats


def quantization_fidelity(float_compiled: Any, quant_compiled: Any,
                          inputs: Any) -> dict[str, dict[str, float]]:
    """Per output of two compiled models on the same data (calibration form: samples on axis
    0, any count; run in model-sized batches): max abs error and cosine against the float
    model, plus top-1 agreement for [batch, classes] outputs (classifiers)."""
    from tvmcompress.reference import fidelity

    sig = float_compiled.signature
    data = {spec["name"]: np.asarray(v) for spec, v in
            zip(sig.inputs, [load_calibration(inputs)[n] for n in sig.input_names], strict=True)}
    batch, n = sig.inputs[0]["shape"][0], next(iter(data.values())).shape[0]
    ref: dict[str, list] = {}
    out: dict[str, list] = {}
    for arrays in _batches(list(data.values()), batch):
        feed = dict(zip(data, arrays, strict=True))
        for store, model in ((ref, float_compiled), (out, quant_compiled)):
            for name, value in model.run(feed).items():
                store.setdefault(name, []).append(value)
    rows = {}
    for name in ref:
        a, b = np.concatenate(ref[name])[:n], np.concatenate(out[name])[:n]
        rows[name] = fidelity(a, b)
        if a.ndim == 2 and a.shape[1] > 1:
            rows[name]["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
    return rows
