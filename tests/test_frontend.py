"""tc.load: bad inputs get tvmcompress errors that name the culprit; old and shape-computing
models import and match onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import tvmcompress as tc

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, **kwargs) -> onnx.ModelProto:
    """A one-graph model; ``inputs``/``outputs`` are (name, shape) pairs of float tensors."""
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(n, FLOAT, s) for n, s in inputs],
                          [oh.make_tensor_value_info(n, FLOAT, s) for n, s in outputs],
                          list(inits))
    opsets = kwargs.pop("opsets", [oh.make_opsetid("", opset)])
    return oh.make_model(graph, opset_imports=opsets, **kwargs)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(tc.TvmCompressError, match="does not exist") as info:
        tc.load(path)
    assert str(path) in str(info.value)


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a protobuf\n")
    with pytest.raises(tc.UnsupportedModelError, match="not a readable ONNX model") as info:
        tc.load(path)
    assert str(path) in str(info.value)


def test_checker_rejects():
    """A node reading an undefined tensor: the checker's reason reaches the user."""
    model = _model([oh.make_node("Relu", ["undefined_t"], ["y"], name="relu0")],
                   [("x", [1, 4])], [("y", [1, 4])])
    with pytest.raises(tc.UnsupportedModelError, match="ONNX checker") as info:
        tc.load(model)
    assert "undefined_t" in str(info.value)


@pytest.fixture
def dynamic_two_inputs() -> onnx.ModelProto:
    """``y = a + b`` with a dynamic batch ``n`` on both inputs and a dynamic ``m`` on ``b``."""
    return _model([oh.make_node("Add", ["a", "b"], ["y"])],
                  [("a", ["n", 4]), ("b", ["n", "m"])], [("y", ["n", 4])])


def test_dynamic_dims_listed(dynamic_two_inputs):
    """One error lists every dynamic input with its declared dims."""
    with pytest.raises(tc.InputError, match="input_shapes") as info:
        tc.load(dynamic_two_inputs)
    message = str(info.value)
    assert "a: ['n', 4]" in message
    assert "b: ['n', 'm']" in message


def test_dynamic_dims_partly_given(dynamic_two_inputs):
    """Only the inputs still dynamic are listed."""
    with pytest.raises(tc.InputError) as info:
        tc.load(dynamic_two_inputs, input_shapes={"a": [2, 4]})
    assert "b: ['n', 'm']" in str(info.value)
    assert "a: " not in str(info.value)


@pytest.mark.parametrize("shapes, needles", [
    ({"a": [2, 4, 1], "b": [2, 4]}, ["'a'", "rank 3", "rank 2"]),
    ({"a": [2, 5], "b": [2, 4]}, ["'a'", "dimension 1 must be 4", "got 5"]),
    ({"a": [2, 4], "b": [2, 4], "c": [1]}, ["['c']", "['a', 'b']"]),
    ({"a": [2, 4], "b": [2, 0]}, ["'b'", "positive", "got 0"]),
], ids=["rank", "static-dim", "unknown-name", "zero-dim"])
def test_bad_input_shapes(dynamic_two_inputs, shapes, needles):
    with pytest.raises(tc.InputError) as info:
        tc.load(dynamic_two_inputs, input_shapes=shapes)
    for needle in needles:
        assert needle in str(info.value)


def test_unsupported_operators_listed():
    """Ops TVM has no converter for, standard and contrib: type, first node, opset each."""
    nodes = [oh.make_node("Celu", ["x"], ["c1"], name="celu_first"),
             oh.make_node("Celu", ["c1"], ["c2"], name="celu_second"),
             oh.make_node("FusedGemm", ["c2", "w"], ["y"], name="fused0", domain="com.microsoft")]
    w = nh.from_array(np.eye(4, dtype="float32"), "w")
    model = _model(nodes, [("x", [1, 4])], [("y", [1, 4])], [w],
                   opsets=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    with pytest.raises(tc.UnsupportedModelError) as info:
        tc.load(model)
    message = str(info.value)
    assert "Celu (domain ai.onnx, opset 17)" in message and "'celu_first'" in message
    assert "celu_second" not in message
    assert "FusedGemm (domain com.microsoft, opset 1)" in message and "'fused0'" in message
    assert "Traceback" not in message


def test_importer_failure_names_node(ort):
    """A valid model (onnxruntime runs it) that TVM's converter rejects: a 4-D convolution."""
    w = nh.from_array(np.ones([2, 1, 1, 1, 1, 1], "float32"), "w")
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu0"),
             oh.make_node("Conv", ["r", "w"], ["y"], name="conv4d")]
    model = _model(nodes, [("x", [1, 1, 2, 2, 2, 2])], [("y", [1, 2, 2, 2, 2, 2])], [w])
    assert ort(model, {"x": np.ones([1, 1, 2, 2, 2, 2], "float32")})["y"].shape[1] == 2
    with pytest.raises(tc.UnsupportedModelError) as info:
        tc.load(model)
    message = str(info.value)
    assert "node 'conv4d' (op Conv, opset 17)" in message
    assert "Ndim > 5" in message  # TVM's own reason, first line only
    assert "Traceback" not in message


def _ir3_model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    """IR version 3, opset 9: every initializer is also listed as a graph input."""
    weight_inputs = [oh.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = oh.make_graph(nodes, "old", [oh.make_tensor_value_info("x", FLOAT, x_shape),
                                         *weight_inputs],
                          [oh.make_tensor_value_info("y", FLOAT, y_shape)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model)
    return model


def _weights(rng, *shapes):
    return [nh.from_array(rng.standard_normal(s).astype("float32"), f"w{i}")
            for i, s in enumerate(shapes)]


def test_ir3_weights_as_inputs(assert_matches_ort):
    """Weights listed among graph inputs are constants, not inputs to supply."""
    rng = np.random.default_rng(0)
    inits = _weights(rng, [8, 4], [4])
    nodes = [oh.make_node("Gemm", ["x", "w0", "w1"], ["h"], name="gemm0"),
             oh.make_node("Relu", ["h"], ["y"], name="relu0")]
    model = _ir3_model(nodes, inits, [2, 8], [2, 4])
    before = model.SerializeToString()
    loaded = tc.load(model)
    assert model.SerializeToString() == before, "load() must not mutate its input"
    assert [s.name for s in loaded.inputs] == ["x"]
    inputs = {"x": rng.standard_normal([2, 8]).astype("float32")}
    assert_matches_ort(model, tc.compile(loaded), inputs)


def _shape_nodes() -> list[onnx.NodeProto]:
    """reshape(x, concat(shape(x)[0:1], [-1])): the flatten torch exports emit."""
    return [oh.make_node("Shape", ["x"], ["s"], name="shape0"),
            oh.make_node("Gather", ["s", "i0"], ["b0"], name="gather0", axis=0),
            oh.make_node("Concat", ["b0", "m1"], ["ns"], name="concat0", axis=0),
            oh.make_node("Reshape", ["x", "ns"], ["r"], name="reshape0")]


def _shape_consts():
    return [nh.from_array(np.array([0], "int64"), "i0"),
            nh.from_array(np.array([-1], "int64"), "m1")]


def test_shape_computation_folds(assert_matches_ort):
    """TVM alone rejects a Reshape to a computed shape; after folding it imports."""
    nodes = [*_shape_nodes(), oh.make_node("Softmax", ["r"], ["y"], name="softmax0", axis=-1)]
    model = _model(nodes, [("x", ["b", 4, 6])], [("y", ["b", 24])], _shape_consts(), opset=13)
    loaded = tc.load(model, input_shapes={"x": [3, 4, 6]})
    assert {n.op_type for n in loaded.onnx_model.graph.node}.isdisjoint({"Shape", "Concat"})
    x = np.random.default_rng(0).standard_normal([3, 4, 6]).astype("float32")
    assert_matches_ort(model, tc.compile(loaded), {"x": x})


def test_ir3_shape_computation_folds(assert_matches_ort):
    """Old models need folding too: an IR-3 flatten + matmul must import, folded."""
    rng = np.random.default_rng(1)
    inits = [*_shape_consts(), *_weights(rng, [24, 4])]
    nodes = [*_shape_nodes(), oh.make_node("MatMul", ["r", "w0"], ["y"], name="mm0")]
    model = _ir3_model(nodes, inits, [3, 4, 6], [3, 4])
    loaded = tc.load(model)
    assert loaded.notes == [], "constant folding was skipped"
    x = rng.standard_normal([3, 4, 6]).astype("float32")
    assert_matches_ort(model, tc.compile(loaded), {"x": x})
