"""Parity helpers for schedule-rule tests: the same Relax module built with and without our
rules (a plain module, not conftest.py, so its name cannot clash with tests/conftest.py)."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import tvm
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tvm import relax
from tvm.s_tir import dlight as dl

import tvmcompress as tc
from tvmcompress.targets import resolve_target

build_module = importlib.import_module("tvmcompress.schedules.build")
# Scheduled vs unscheduled: the same products summed in the same k order, but fused into FMAs
# (one rounding instead of two); measured max error ~1e-6 relative on these sizes.
TOL = {"rtol": 2e-5, "atol": 2e-5}


def fused(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``mod`` after our layout passes, legalization and fusion: the functions rules see."""
    backend = build_module._backend(target)
    fuse = [p for p in backend.legalize_passes(target)
            if not isinstance(p, dl.ApplyDefaultSchedule)]
    with target:
        return tvm.transform.Sequential(backend.library_dispatch_passes(target)
                                        + build_module.layout_passes(target) + fuse)(mod)


def unscheduled_build(mod: tvm.IRModule, target: tvm.target.Target):
    """TVM's backend pipeline with no schedule rule and no layout pass at all."""
    backend = build_module._backend(target)
    fuse = [p for p in backend.legalize_passes(target)
            if not isinstance(p, dl.ApplyDefaultSchedule)]
    passes = (backend.library_dispatch_passes(target) + fuse
              + backend.dataflow_lower_passes(target) + backend.finalize_passes(target))
    with target:
        return tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(passes))


def run(executable, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def assert_parity(model: onnx.ModelProto, seed: int = 0, target: str = "host"
                  ) -> tc.CompiledModel:
    """Build ``model`` for ``target`` (a preset this host runs) with our rules and without
    any; outputs must agree on random inputs, and every kernel must have a schedule."""
    compiled = tc.compile(model, target=target)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s["shape"]).astype("float32")
              for s in compiled.signature.inputs]
    expected = run(unscheduled_build(compiled.ir, resolve_target(target).tvm_target), inputs)
    actual = compiled.run(inputs)
    (value,) = actual.values()
    np.testing.assert_allclose(value, expected, **TOL)
    assert compiled.build_info.unscheduled == []
    return compiled


def onnx_model(nodes, inputs: dict, output: tuple, weights: dict) -> onnx.ModelProto:
    """A one-output float32 ONNX model from nodes, input shapes, (name, shape) and weights."""
    graph = oh.make_graph(
        nodes, "m",
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [oh.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def weights(seed: int, **shapes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype("float32") for k, s in shapes.items()}
