"""Quantize pass on tiny graphs: golden IR, no-ops, exact numpy references of each scheme,
half precision, exotic weights, safe fallbacks and errors, CLI flags (digits CNN accuracy:
test_quantize_digits.py; all-MiniLM-L6-v2: test_quantize_minilm.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

import tvmcompress as tc
from tvmcompress.passes import _quant_math as qm
from tvmcompress.passes._quant_plan import int8_weight_bits
from tvmcompress.passes.quantize import QuantizeConfig, quantize, quantize_module
from tvmcompress.passes.record import collecting
from tvmcompress.schedules.build import fusion_passes


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(
        e, relax.Call) and getattr(e.op, "name", "") == op else None)
    return found


def _tiny(w: np.ndarray, x_shape=(2, 4)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(y)
    return bb.get()


def _tiny_onnx(w: np.ndarray, x_shape) -> tc.Model:
    """The same ``x @ W`` as an ONNX model, for tests that compile."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT,
                                                     [*x_shape[:-1], w.shape[1]])],
                          [numpy_helper.from_array(w, "w")])
    return tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def test_golden_int8_dynamic_matmul():
    """matmul(x, W) -> per-token int8 x, int8 W, int32 accumulation, one float tail."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    wq, ws = qm.quantize_per_channel(w, axis=1, bits=int8_weight_bits())
    after = quantize(QuantizeConfig(scheme="int8-dynamic"))(_tiny(w))

    def c(v, dtype="float32"):
        return relax.const(np.asarray(v, dtype=dtype))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            amax = bb.emit(relax.op.max(bb.emit(relax.op.abs(x)), axis=-1, keepdims=True))
            s = bb.emit(relax.op.maximum(bb.emit(relax.op.divide(amax, c(127.0))), c(1e-30)))
            r = bb.emit(relax.op.round(bb.emit(relax.op.divide(x, s))))
            r = bb.emit(relax.op.minimum(bb.emit(relax.op.maximum(r, c(-127.0))), c(127.0)))
            acc = bb.emit(relax.op.matmul(bb.emit(relax.op.astype(r, "int8")), c(wq, "int8"),
                                          out_dtype="int32"))
            y = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), s))
            y = bb.emit_output(relax.op.multiply(y, c(ws)))
        bb.emit_func_output(y)
    tvm.ir.assert_structural_equal(after, bb.get())


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8"])
def test_int8_matmul_on_3d_activations_keeps_its_epilogue_fused(scheme):
    """[batch, seq, K] @ W stays one 3-D integer matmul (no reshape after it), so the float
    tail fuses into the int8 GEMM kernel; the kernel is tensorized and values are right."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    calibration = {"x": x} if scheme == "int8" else None
    config = QuantizeConfig(scheme=scheme, calibration=calibration)
    after = quantize(config)(_tiny(w, (2, 5, 16)))
    (contraction,) = [c for c in _calls(after, "relax.matmul")]
    assert [int(d) for d in contraction.args[0].ty.shape.values] == [2, 5, 16]
    assert str(contraction.ty.dtype) == "int32" and not _calls(after, "relax.reshape")
    compiled = tc.compile(_tiny_onnx(w, (2, 5, 16)), "host",
                          config=tc.CompressConfig(passes=[config]))
    target = compiled.preset.tvm_target
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(compiled.ir)
    assert any("int8_gemm" in gv.name_hint and "multiply" in gv.name_hint
               for gv in fused.functions)  # the scale multiply runs inside the GEMM kernel
    assert not compiled.build_info.unscheduled or all(
        "abs" in n for n in compiled.build_info.unscheduled)
    (y,) = compiled.run({"x": x}).values()
    assert y.shape == (2, 5, 24)
    np.testing.assert_allclose(y, x @ w, atol=0.05 * np.abs(x @ w).max())


def test_activation_times_activation_is_unchanged():
    """No constant weight (attention's Q @ K^T): returned as is, with the reason recorded."""
    bb = relax.BlockBuilder()
    a, b = (relax.Var(n, relax.TensorType((2, 4, 4), "float32")) for n in "ab")
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(a, b))
        bb.emit_func_output(y)
    before = bb.get()
    with collecting() as rows:
        after = quantize(QuantizeConfig(scheme="int4"))(before)
    tvm.ir.assert_structural_equal(after, before)
    assert rows == [{"pass": "Quantize", "layer": "matmul0", "scheme": "fp32",
                     "note": "weight (2nd operand) is not a constant"}]


def test_nan_weights_and_exclusions_stay_float():
    w = np.ones((4, 3), np.float32)
    w[0, 0] = np.nan
    with collecting() as rows:
        tvm.ir.assert_structural_equal(quantize_module(_tiny(w), QuantizeConfig()), _tiny(w))
        quantize_module(_tiny(w * 0), QuantizeConfig(exclude=("matmul",)))
    assert [r["note"] for r in rows] == ["weight holds NaN/Inf: left float",
                                         "excluded by 'matmul'"]


def test_unknown_layer_names_are_config_errors():
    w = np.ones((4, 3), np.float32)
    for cfg in (QuantizeConfig(exclude=("matmul7",)), QuantizeConfig(per_layer={"cnv": "int4"})):
        with pytest.raises(tc.ConfigError, match=r"names \['(matmul7|cnv)'\].*layers: matmul0"):
            quantize_module(_tiny(w), cfg)


@pytest.mark.parametrize("scheme, dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_half_precision_matmul(scheme, dtype):
    w = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    config = tc.CompressConfig([QuantizeConfig(scheme=scheme)])
    cm = tc.compile(_tiny_onnx(w, (2, 64)), config=config)
    (call,) = _calls(cm.ir, "relax.matmul")
    assert [str(a.ty.dtype) for a in call.args] == [dtype, dtype]
    out = next(iter(cm.run([x]).values()))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x @ w, rtol=0.05, atol=0.05 if scheme == "bf16" else 0.01)


@pytest.mark.parametrize("scheme, levels", [("binary", 1), ("ternary", 2), ("pow2", 8)])
def test_exotic_weights_take_few_values(scheme, levels):
    """Weights become sign x per-channel scale (binary/ternary) or scale x 2^-k (pow2)."""
    w = np.random.default_rng(3).standard_normal((32, 4)).astype(np.float32)
    with collecting() as rows:
        (call,) = _calls(quantize(QuantizeConfig(scheme=scheme))(_tiny(w, (2, 32))),
                         "relax.matmul")
    fake = call.args[1].value.numpy()
    for j in range(4):
        mags = np.unique(np.abs(fake[:, j][fake[:, j] != 0]))
        assert len(mags) <= levels, mags
        if scheme == "pow2":
            ratios = np.log2(mags.max() / mags)
            np.testing.assert_allclose(ratios, np.rint(ratios), atol=1e-5)
    assert "stored as float32" in rows[0]["note"] and rows[0]["bits"] in (1, 2, 4)


def test_constant_calibration_and_zero_inputs_stay_finite():
    """All-zero calibration (zero range -> scale 1) and an all-zero input to int8-dynamic
    (scale floored) give finite outputs equal to the float model's on zeros."""
    w = np.random.default_rng(4).standard_normal((16, 4)).astype(np.float32)
    zeros = np.zeros((2, 16), np.float32)
    for cfg in (QuantizeConfig(scheme="int8", calibration={"x": zeros}),
                QuantizeConfig(scheme="int8-dynamic")):
        cm = tc.compile(_tiny_onnx(w, (2, 16)), config=tc.CompressConfig([cfg]))
        np.testing.assert_array_equal(next(iter(cm.run([zeros]).values())), zeros @ w)


def test_bad_calibration_through_compile():
    w = np.ones((16, 4), np.float32)
    bad = np.ones((2, 16), np.float32)
    bad[1, 3] = np.inf
    cfg = QuantizeConfig(scheme="int8", calibration={"x": bad})
    with pytest.raises(tc.InputError, match="'x' holds 1 NaN/Inf"):
        tc.compile(_tiny_onnx(w, (2, 16)), config=tc.CompressConfig([cfg]))


def test_cli_flags_build_the_config(tmp_path):
    import argparse

    from tvmcompress.cli.compress_flags import quantize as flags

    parser = argparse.ArgumentParser()
    flags.add_arguments(parser.add_argument_group())
    assert flags.configs(parser.parse_args([])) == []
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 16), np.float32))
    args = parser.parse_args(["--quantize", "int8", "--calib", str(tmp_path / "c.npz"),
                              "--calib-method", "entropy", "--quantize-exclude", "conv2d0,matmul",
                              "--int4-group-size", "64"])
    (cfg,) = flags.configs(args)
    assert (cfg.scheme, cfg.method, cfg.exclude, cfg.group_size) == \
        ("int8", "entropy", ("conv2d0", "matmul"), 64)
    with pytest.raises(tc.ConfigError, match="--calib is only used with --quantize"):
        flags.configs(parser.parse_args(["--calib", "c.npz"]))


@pytest.mark.parametrize("mode", ["uint8-asym", "int8-sym"])
def test_int8_static_matches_numpy_reference(mode):
    """The compiled integer graph computes exactly the numpy model of the scheme."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((48, 8)).astype(np.float32)
    x = (rng.standard_normal((4, 48)) + 0.5).astype(np.float32)
    cfg = QuantizeConfig(scheme="int8", calibration={"x": x}, activation=mode)
    cm = tc.compile(_tiny_onnx(w, (4, 48)), config=tc.CompressConfig([cfg]))
    (row,) = [r for r in cm.pass_log if r.get("layer") == "matmul0"]
    s, z = row["act_scale"], row["act_zero"]
    assert (z != 0) == (mode == "uint8-asym")
    xq = qm.quantize_activation(x, s, z, mode).astype(np.int64) - z
    wq, ws = qm.quantize_per_channel(w, axis=1)  # explicit activation: 8-bit weights
    expected = (xq @ wq.astype(np.int64)).astype(np.float32) * (np.float32(s) * ws)
    np.testing.assert_allclose(next(iter(cm.run([x]).values())), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_matches_numpy_reference(symmetric):
    """A 3-D input (flattened to rows) through the dequant-matmul PrimFunc: x @ dequant(W)."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    cfg = QuantizeConfig(scheme="int4", symmetric=symmetric, group_size=32)
    cm = tc.compile(_tiny_onnx(w, (2, 3, 64)), config=tc.CompressConfig([cfg]))
    deq = qm.dequantize_groups_int4(*qm.quantize_groups_int4(w, 32, symmetric), 32)
    out = next(iter(cm.run([x]).values()))
    np.testing.assert_allclose(out, x @ deq, rtol=1e-5, atol=1e-5)
    assert np.abs(out - x @ w).max() > 1e-3  # it really is quantized
