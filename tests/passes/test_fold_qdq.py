"""FoldQDQ: QDQ models (onnxruntime quantize_static) fold into integer conv/matmul and keep
onnxruntime's numerics; ineligible matches stay as they are, with a reason."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from _ort_quant import ONE_STEP, assert_integer, output_scale, quantize, seeded
from tvm import relax

import tvmcompress as tc
from tvmcompress.passes.fold_qdq import FoldQDQConfig, fold_qdq, recover_int_weight
from tvmcompress.passes.record import collecting
from tvmcompress.reference import ort_run


def _ort_unoptimized(model, inputs):
    """onnxruntime executing the QDQ graph as written (no QDQ fusion, no S8->U8 rewrite)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


# reduce_range (7-bit weights) keeps onnxruntime's fused AVX2 u8s8 kernels from saturating, so its
# default (optimized) session is a fair reference for conv/gemm models. Bound: one output step.
@pytest.mark.parametrize("name, n_int_ops", [("mlp", 3), ("cnn", 7)])
def test_qdq_folds_to_integer_and_matches_onnxruntime(name, n_int_ops, tmp_path):
    """Measured: mlp 0 vs both sessions; cnn 0.0015 = 1 step of its output (scale 0.0015)."""
    model = quantize(name, tmp_path, "QDQ", reduce_range=True)
    compiled = tc.compile(model, config=tc.CompressConfig(passes=[FoldQDQConfig()]))
    assert assert_integer(compiled.ir) == n_int_ops
    assert all(row["folded"] for row in compiled.pass_log)
    x, step = seeded(name), output_scale(model) * ONE_STEP
    actual = compiled.run(x)["y"]
    assert np.abs(actual - ort_run(model, x)["y"]).max() <= step
    assert np.abs(actual - _ort_unoptimized(model, x)).max() <= step


@pytest.mark.slow
def test_qdq_transformer_attention_folds(tmp_path):
    """Both attention matmuls (two dequantized activations) fold too. onnxruntime's optimized
    session rewrites S8 activations to U8 and its AVX2 kernels saturate (measured 0.086 off), so
    the reference is the unfused graph: measured 0 difference."""
    model = quantize("transformer", tmp_path, "QDQ")
    compiled = tc.compile(model, config=tc.CompressConfig(passes=[FoldQDQConfig()]))
    assert assert_integer(compiled.ir) == 6
    x = seeded("transformer")
    diff = np.abs(compiled.run(x)["y"] - _ort_unoptimized(model, x)).max()
    assert diff <= output_scale(model) * ONE_STEP


def test_recover_int_weight_per_tensor_and_per_channel():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (4, 3, 3, 3))
    q[:, 0, 0, 0] = 127  # symmetric: the largest |q| is 127 in every channel
    scales = np.float32([0.01, 0.2, 3.0, 1e-4])
    w = (q * scales.reshape(4, 1, 1, 1)).astype(np.float32)
    got_q, got_s = recover_int_weight(w, axis=0)
    np.testing.assert_array_equal(got_q, q)
    np.testing.assert_allclose(got_s, scales, rtol=1e-6)
    got_q, got_s = recover_int_weight((q * np.float32(0.05)).astype(np.float32), axis=0)
    assert got_s.shape == (1,) and np.array_equal(got_q, q)


def test_float_weights_are_left_alone():
    """A weight off every 8-bit grid: the chain stays float and the reason is recorded."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 16), "int8"))
    s, z = relax.const(0.1, "float32"), relax.const(0, "int8")
    w = relax.const(np.random.default_rng(1).standard_normal((16, 4)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(relax.op.dequantize(x, s, z, axis=1))
            y = bb.emit(relax.op.matmul(xf, w))
            out = bb.emit_output(relax.op.quantize(y, s, z, axis=1, out_dtype="int8"))
        bb.emit_func_output(out)
    mod = bb.get()
    with collecting() as log:
        folded = fold_qdq(mod)
    tvm.ir.assert_structural_equal(folded, mod)
    assert log == [{"pass": "FoldQDQ", "layer": "matmul_1", "folded": False,
                    "reason": "weight is not on an 8-bit grid"}]


def _biased_matmul(bias_int: np.ndarray, shift: float) -> tvm.IRModule:
    """DQ(x) @ W + bias -> Q, the bias as onnxruntime's import leaves it: ``bias_int *
    bias_scale`` in float32 (``shift`` moves it off that grid, in accumulator steps)."""
    rng = np.random.default_rng(2)
    x_scale, w_scale = np.float32(0.02), np.float32(0.01)
    acc_scale = np.float32(x_scale * w_scale)
    q = rng.integers(-127, 128, (16, 4))
    q[0, 0] = 127  # symmetric grid: the largest |q| is 127
    w = (q * w_scale).astype("float32")
    bias = ((bias_int + shift) * acc_scale).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 16), "int8"))
    zero = relax.const(0, "int8")
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(relax.op.dequantize(x, relax.const(x_scale), zero, axis=1))
            y = bb.emit(relax.op.add(relax.op.matmul(xf, relax.const(w)), relax.const(bias)))
            out = bb.emit_output(relax.op.quantize(y, relax.const(np.float32(0.5)), zero,
                                                   axis=1, out_dtype="int8"))
        bb.emit_func_output(out)
    return bb.get()


def test_large_int32_biases_fold():
    """Deep layers' int32 biases reach 1e5-2e6 (onnxruntime's ResNet-18): in float32 they sit
    a few ulps (up to 0.125 absolute) off the accumulator grid and must still fold; a bias
    really off the grid (by 0.3 steps) stays float."""
    bias_int = np.array([1421077, -1793468, 113817, 3882], np.int64)
    with collecting() as log:
        fold_qdq(_biased_matmul(bias_int, 0.0))
    assert [row.get("reason") for row in log] == [None]
    with collecting() as log:
        fold_qdq(_biased_matmul(np.array([17, -5, 3, 8]), 0.3))
    assert log[0]["reason"] == "bias is not on the int32 grid of x_scale * w_scale"


def test_float_model_is_unchanged(zoo_onnx):
    mod = tc.load(zoo_onnx("mlp"), input_shapes={"x": [1, 64]}).mod
    tvm.ir.assert_structural_equal(fold_qdq(mod), mod)


@pytest.mark.parametrize("bad", [0.0, 0.5, -1.0])
def test_config_rejects_bad_tolerance(bad):
    with pytest.raises(tc.ConfigError, match=r"FoldQDQConfig.tolerance.*\(0, 0.5\)"):
        FoldQDQConfig(tolerance=bad)
