"""Models quantized by onnxruntime (QOperator, dynamic) and MatMulNBits compile to integer
conv/matmul and agree with onnxruntime; unknown quantized ops get our clean error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _ort_quant import ONE_STEP, assert_integer, output_scale, quantize, seeded
from onnx import TensorProto
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress.nbits import dequantize_nbits, quantize_nbits
from tvmcompress.reference import ort_run

# (model, integer conv/matmul count). Bound: |diff| <= the output DequantizeLinear's scale (one
# step); for a float output op (transformer: LayerNorm), 1e-5 * max|y|.
QOPERATOR = [("cnn", 7), ("mlp", 3), pytest.param("transformer", 6, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, n_int_ops", QOPERATOR)
def test_qoperator_static_matches_onnxruntime(name, n_int_ops, tmp_path):
    """QLinearConv/QGemm/QLinearMatMul are integer; the output is within one step of ORT's
    (measured here: 0 for cnn and mlp, 4.8e-7 for transformer's float LayerNorm tail)."""
    model = quantize(name, tmp_path, "QOperator")
    compiled = tc.compile(model)
    assert assert_integer(compiled.ir) == n_int_ops
    x = seeded(name)
    expected = ort_run(model, x)["y"]
    diff = np.abs(compiled.run(x)["y"] - expected).max()
    step = output_scale(model)  # None: a float op (transformer's LayerNorm) makes the output
    bound = step * ONE_STEP if step is not None else 1e-5 * np.abs(expected).max()
    assert diff <= bound, f"{name}: |diff| {diff} > {bound}"


# reduce_range (7-bit weights): onnxruntime's AVX2 u8s8 kernels saturate int16 pair sums with
# 8-bit weights (measured: MatMulInteger off by 2352 in int32), so only then is ORT exact here.
# quantize_dynamic leaves the attention matmuls (two activations) float: 2 float ops.
@pytest.mark.parametrize("name, n_int_ops, n_float", [
    ("mlp", 3, 0), ("cnn", 7, 0), pytest.param("transformer", 4, 2, marks=pytest.mark.slow)])
def test_dynamic_matches_onnxruntime(name, n_int_ops, n_float, tmp_path):
    """DynamicQuantizeLinear + MatMulInteger/ConvInteger: same int32 accumulators, so the float
    outputs agree to float rounding: |diff| <= 1e-5 * max|y| (measured <= 1.5e-7 relative)."""
    model = quantize(name, tmp_path, "dynamic", reduce_range=True)
    compiled = tc.compile(model)
    assert assert_integer(compiled.ir, float_ops=n_float) == n_int_ops
    x = seeded(name)
    expected = ort_run(model, x)["y"]
    diff = np.abs(compiled.run(x)["y"] - expected).max()
    assert diff <= 1e-5 * np.abs(expected).max(), f"{name}: |diff| {diff}"


def _model(node, inputs, outputs, inits, ms_domain=False):
    graph = oh.make_graph([node], "q", inputs, outputs, inits)
    opsets = [oh.make_opsetid("", 17)] + ([oh.make_opsetid("com.microsoft", 1)] * ms_domain)
    return oh.make_model(graph, opset_imports=opsets)


def _init(name, array):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def test_matmul_integer_is_exact():
    """Zero points (a: scalar, b: per column) are corrected exactly in int32: the result equals
    numpy's int64 product, even where u8 x s8 pair sums exceed int16."""
    rng = np.random.default_rng(0)
    b = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    b_zp = rng.integers(-3, 4, 8).astype(np.int8)
    node = oh.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
    model = _model(node, [oh.make_tensor_value_info("a", TensorProto.UINT8, [4, 32])],
                   [oh.make_tensor_value_info("y", TensorProto.INT32, [4, 8])],
                   [_init("b", b), _init("a_zp", np.uint8(131)), _init("b_zp", b_zp)])
    a = rng.integers(200, 256, (4, 32)).astype(np.uint8)
    compiled = tc.compile(model)
    assert assert_integer(compiled.ir) == 1
    expected = (a.astype(np.int64) - 131) @ (b.astype(np.int64) - b_zp)
    np.testing.assert_array_equal(compiled.run({"a": a})["y"], expected)


def test_conv_integer_pads_with_the_zero_point():
    """ConvInteger pads with x_zero_point (exact at the borders), per-channel weight zps."""
    rng = np.random.default_rng(1)
    w = rng.integers(0, 256, (6, 2, 3, 3)).astype(np.uint8)
    w_zp = rng.integers(120, 136, 6).astype(np.uint8)
    node = oh.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], pads=[1, 1, 1, 1],
                        group=2, strides=[2, 1])
    model = _model(node, [oh.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 7, 7])],
                   [oh.make_tensor_value_info("y", TensorProto.INT32, [1, 6, 4, 7])],
                   [_init("w", w), _init("x_zp", np.uint8(77)), _init("w_zp", w_zp)])
    x = rng.integers(0, 256, (1, 4, 7, 7)).astype(np.uint8)
    compiled = tc.compile(model)
    assert assert_integer(compiled.ir) == 1
    expected = torch.nn.functional.conv2d(
        torch.tensor(x.astype(np.float64) - 77), torch.tensor(
            w.astype(np.float64) - w_zp.reshape(6, 1, 1, 1)), padding=1, stride=(2, 1), groups=2)
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], expected.numpy().astype(np.int32))


def test_matmul_nbits_matches_onnxruntime():
    """4-bit, block 32, K not a multiple of the block: our numpy packing is the layout
    onnxruntime reads (equal to numpy's dequantized matmul), and TVM agrees to fp32 rounding."""
    k, n = 80, 48
    rng = np.random.default_rng(2)
    b, scales, zps = quantize_nbits(rng.standard_normal((k, n)).astype(np.float32), 4, 32)
    node = oh.make_node("MatMulNBits", ["a", "B", "S", "Z"], ["y"], domain="com.microsoft",
                        K=k, N=n, bits=4, block_size=32)
    model = _model(node, [oh.make_tensor_value_info("a", TensorProto.FLOAT, [3, k])],
                   [oh.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                   [_init("B", b), _init("S", scales), _init("Z", zps)], ms_domain=True)
    a = rng.standard_normal((3, k)).astype(np.float32)
    expected = ort_run(model, {"a": a})["y"]
    np.testing.assert_allclose(expected, a @ dequantize_nbits(b, scales, zps, k, n, 4, 32),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tc.compile(model).run({"a": a})["y"], expected, rtol=1e-5,
                               atol=1e-5)


def test_unsupported_quantized_op_is_named():
    """A QOperator op we do not convert gets the clean error naming it and its domain."""
    node = oh.make_node("QLinearLeakyRelu", ["x", "s", "z", "s", "z"], ["y"],
                        domain="com.microsoft", alpha=0.1)
    model = _model(node, [oh.make_tensor_value_info("x", TensorProto.UINT8, [2, 3])],
                   [oh.make_tensor_value_info("y", TensorProto.UINT8, [2, 3])],
                   [_init("s", np.float32(0.1)), _init("z", np.uint8(128))], ms_domain=True)
    with pytest.raises(tc.UnsupportedModelError,
                       match=r"(?s)operator type\(s\) tvmcompress cannot import.*"
                             r"QLinearLeakyRelu \(domain com.microsoft"):
        tc.load(model)
