"""Shared fixtures: zoo models compiled once per session, onnxruntime as the reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto
from onnx import helper as oh
from tvm.relax.ir.instrument import WellFormedInstrument

import tvmcompress as tc
from tvmcompress import reference, zoo

# fp32 parity with onnxruntime: the same math in another summation order. Measured here: max abs
# error 1e-6 on outputs of magnitude 4 (transformer), so these leave ~10x headroom and no more.
FP32_RTOL = 1e-5
FP32_ATOL = 1e-5


@pytest.fixture(autouse=True)
def well_formed_ir():
    """Every pass run during a test checks that the Relax IR stays well formed."""
    with tvm.transform.PassContext(instruments=[WellFormedInstrument()]):
        yield


def zoo_shape(name: str, batch: int) -> list[int]:
    """Static input shape of zoo model ``name`` at ``batch``."""
    return [batch, *zoo.ZOO[name][1]]


def seeded_inputs(shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 input ``x`` of ``shape``, reproducible by ``seed``."""
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype("float32")}


@pytest.fixture(scope="session")
def zoo_inputs() -> Callable[..., dict[str, np.ndarray]]:
    """Seeded inputs for zoo model ``name`` at ``batch``: ``zoo_inputs(name, batch, seed=0)``."""
    return lambda name, batch, seed=0: seeded_inputs(zoo_shape(name, batch), seed)


@pytest.fixture(scope="session")
def fp32_tol() -> dict[str, float]:
    """assert_allclose keywords for lossless fp32 compilation."""
    return {"rtol": FP32_RTOL, "atol": FP32_ATOL}


@pytest.fixture(scope="session")
def zoo_onnx() -> Callable[[str], onnx.ModelProto]:
    """Zoo model by name, exported once (dynamic batch)."""
    cache: dict[str, onnx.ModelProto] = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            cache[name] = zoo.build(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def compiled_zoo(zoo_onnx) -> Callable[..., tc.CompiledModel]:
    """Zoo model compiled once per (name, batch, target): compiling dominates test time."""
    cache: dict[tuple[str, int, str], tc.CompiledModel] = {}

    def get(name: str, batch: int = 1, target: str = "host") -> tc.CompiledModel:
        key = (name, batch, target)
        if key not in cache:
            model = tc.load(zoo_onnx(name), input_shapes={"x": zoo_shape(name, batch)})
            cache[key] = tc.compile(model, target=target)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def ort() -> Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """onnxruntime outputs by name: the ground truth every compiled model is held to."""
    return reference.ort_run


@pytest.fixture(scope="session")
def assert_matches_ort(ort):
    """Assert every output of ``compiled`` matches onnxruntime on ``inputs`` to fp32 tolerance."""

    def check(model: onnx.ModelProto, compiled: tc.CompiledModel, inputs) -> None:
        expected = ort(model, inputs)
        actual = compiled.run(inputs)
        assert sorted(actual) == sorted(expected), "output names differ from onnxruntime's"
        for name, value in expected.items():
            assert actual[name].shape == value.shape, name
            np.testing.assert_allclose(actual[name], value, rtol=FP32_RTOL, atol=FP32_ATOL,
                                       err_msg=f"output {name!r} vs onnxruntime")

    return check


def make_two_input_model() -> onnx.ModelProto:
    """``y = a - 2 * b``: two float32 [2, 3] inputs whose order matters."""
    nodes = [oh.make_node("Mul", ["b", "two"], ["b2"], name="mul0"),
             oh.make_node("Sub", ["a", "b2"], ["y"], name="sub0")]
    graph = oh.make_graph(
        nodes, "two_inputs",
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.fixture(scope="session")
def two_input() -> tc.CompiledModel:
    """The two-input model compiled for host, once."""
    return tc.compile(make_two_input_model(), target="host")
