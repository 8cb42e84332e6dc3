"""Quantization numerics and calibration data handling: bounds, safe fallbacks, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tvm import relax

import tvmcompress as tc
from tvmcompress.passes import _quant_math as qm
from tvmcompress.passes.calibrate import check_calibration, collect, load_calibration
from tvmcompress.passes.quantize import QuantizeConfig

FLOATS = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=FLOATS))
def test_per_channel_error_within_half_step(w):
    q, scale = qm.quantize_per_channel(w, axis=1)
    err = np.abs(qm.dequantize_per_channel(q, scale, axis=1) - w)
    assert q.dtype == np.int8 and np.all(np.abs(q) <= 127)
    assert np.all(err <= scale[None, :] / 2 * (1 + 1e-5) + 1e-30)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.sampled_from([32, 64]), st.integers(1, 5)),
                  elements=FLOATS), st.booleans())
def test_int4_groups_error_within_half_step(w, symmetric):
    """Without range search every weight is within half a step; the search only lowers the
    squared error of each group."""
    packed, scale, offset = qm.quantize_groups_int4(w, 32, symmetric, search=False)
    assert packed.dtype == np.uint8 and packed.shape == (w.shape[0] // 2, w.shape[1])
    err = np.abs(qm.dequantize_groups_int4(packed, scale, offset, 32) - w)
    err = err.reshape(-1, 32, w.shape[1])
    assert np.all(err <= scale[:, None] / 2 * (1 + 1e-4) + 1e-6)
    searched = qm.dequantize_groups_int4(*qm.quantize_groups_int4(w, 32, symmetric), 32) - w
    sq = (searched.reshape(err.shape) ** 2).sum(1)
    assert np.all(sq <= (err**2).sum(1) * (1 + 1e-4) + 1e-9)


@given(hnp.arrays(np.uint8, st.tuples(st.sampled_from([2, 8]), st.integers(1, 4)),
                  elements=st.integers(0, 15)))
def test_int4_pack_roundtrip(q):
    np.testing.assert_array_equal(qm.unpack_int4(qm.pack_int4(q)), q)


@pytest.mark.parametrize("mode", qm.ACTIVATION_MODES)
def test_activation_fake_quant_within_half_step(mode):
    x = np.random.default_rng(0).uniform(-3, 5, 1000).astype(np.float32)
    scale, zero = qm.activation_qparams(x.min(), x.max(), mode)
    err = np.abs(qm.fake_quantize_activation(x, scale, zero, mode) - x)
    assert err.max() <= scale / 2 * 1.001
    assert qm.fake_quantize_activation(np.zeros(1, np.float32), scale, zero, mode)[0] == 0.0


def test_zero_range_gets_safe_scale():
    """Constant tensors: scale 1, everything exact, no division by zero."""
    assert qm.activation_qparams(0.0, 0.0, "uint8-asym") == (1.0, 0)
    assert qm.activation_qparams(0.0, 0.0, "int8-sym") == (1.0, 0)
    w = np.zeros((4, 3), np.float32)
    w[:, 1] = 0.5
    q, scale = qm.quantize_per_channel(w, axis=1)
    np.testing.assert_allclose(scale, [1.0, 0.5 / 127, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(qm.dequantize_per_channel(q, scale, 1), w)
    packed, s, _ = qm.quantize_groups_int4(np.zeros((32, 2), np.float32), 32, True)
    assert np.all(s == 1.0) and np.all(qm.dequantize_groups_int4(packed, s, None, 32) == 0)


def test_range_methods_clip_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000), [60.0, -60.0]]).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    assert qm.activation_range(x, lo, hi, "minmax", "int8-sym") == (lo, hi)
    for method in ("percentile", "entropy"):
        a, b = qm.activation_range(x, lo, hi, method, "int8-sym", percentile=99.9)
        assert 1.0 < b < 30.0 and -30.0 < a < -1.0, (method, a, b)

    def mse(r):
        s, z = qm.activation_qparams(*r, "int8-sym")
        return np.mean((qm.fake_quantize_activation(x, s, z, "int8-sym") - x) ** 2)

    chosen = qm.activation_range(x, lo, hi, "mse", "int8-sym")
    assert chosen[1] < hi and mse(chosen) < mse((lo, hi))


def _params(shape=(2, 4), dtype="float32"):
    return [relax.Var("x", relax.TensorType(shape, dtype))]


def test_calibration_forms_agree(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    for form in ({"x": data}, tmp_path / "calib.npz", [{"x": data[:4]}, {"x": data[4:]}]):
        (arr,) = check_calibration(load_calibration(form), _params())
        np.testing.assert_array_equal(arr, data)


@pytest.mark.parametrize("data, match", [
    ({"y": np.zeros((3, 4), np.float32)}, r"missing \['x'\], unexpected \['y'\]"),
    ({"x": np.zeros((3, 5), np.float32)}, r"'x' has shape \[3, 5\]; expected \[samples, 4\]"),
    ({"x": np.zeros((3, 4), np.int32)}, r"'x' has dtype int32; the model takes float32"),
    ({"x": np.zeros((0, 4), np.float32)}, r"'x' has no samples"),
    ({"x": np.array([[0, np.nan, 0, np.inf]], np.float32)}, r"'x' holds 2 NaN/Inf"),
])
def test_bad_calibration_is_named(data, match):
    with pytest.raises(tc.InputError, match=match):
        check_calibration(load_calibration(data), _params())


def test_empty_or_missing_calibration_sources(tmp_path):
    with pytest.raises(tc.InputError, match="empty iterable"):
        load_calibration([])
    with pytest.raises(tc.ConfigError, match="does not exist"):
        load_calibration(str(tmp_path / "nope.npz"))
    with pytest.raises(tc.ConfigError, match="calibration must be"):
        load_calibration(3)


@pytest.mark.parametrize("kwargs, match", [
    ({"scheme": "int3"}, "QuantizeConfig.scheme = 'int3'"),
    ({"group_size": 48}, "QuantizeConfig.group_size = 48"),
    ({"method": "kl"}, "QuantizeConfig.method = 'kl'"),
    ({"percentile": 30}, "QuantizeConfig.percentile = 30"),
    ({"scheme": "int8"}, "QuantizeConfig.calibration is required"),
    ({"per_layer": {"matmul0": "int2"}}, r"QuantizeConfig.per_layer\['matmul0'\]"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(tc.ConfigError, match=match):
        QuantizeConfig(**kwargs)


def test_config_to_dict_is_json_able(tmp_path):
    """In-memory data is described (not copied); a path round-trips through JSON."""
    import json

    from tvmcompress.config import pass_config_from_dict

    cfg = QuantizeConfig(scheme="int8", calibration={"x": np.zeros((1, 4))}, exclude=["matmul0"])
    data = json.loads(json.dumps(cfg.to_dict()))["data"]
    assert data["calibration"] == "<in-memory dict>" and data["exclude"] == ["matmul0"]
    cfg = QuantizeConfig(scheme="int4", calibration=str(tmp_path / "c.npz"),
                         per_layer={"matmul0": "fp32"}, exclude=("nn.conv2d",))
    back = pass_config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.calibration == cfg.calibration


def test_collect_sees_the_layer_inputs():
    """The instrumented float module returns each layer's input: exact range and mean."""
    from tvmcompress import zoo

    model = tc.load(zoo.build("mlp"), input_shapes={"x": [4, 64]})
    func = model.mod["main"]
    calls = [b.value for blk in func.body.blocks for b in blk.bindings
             if getattr(getattr(b.value, "op", None), "name", "") == "relax.matmul"]
    data = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)  # 3 batches
    stats = collect(model.mod, [c.args[0] for c in calls], [-1] * 3, {"x": data})
    assert stats[0].lo == data.min() and stats[0].hi == data.max()
    wrapped = np.concatenate([data, data[:2]])  # the last batch wraps around
    np.testing.assert_allclose(stats[0].mean, wrapped.mean(0), rtol=1e-5, atol=1e-6)
    assert stats[1].lo >= 0.0  # after ReLU


def test_collect_keeps_helper_functions():
    """Models whose import adds helper kernels next to ``main`` (ONNX Pad with a reflect mode
    becomes a call_tir) are instrumented with those functions kept."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
         oh.make_node("Conv", ["p", "w"], ["y"])], "pad_conv",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")])
    model = tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    helpers = [gv for gv in model.mod.functions if gv.name_hint != "main"]
    assert helpers, "Pad(reflect) no longer imports as a helper function"
    conv = next(b.value for blk in model.mod["main"].body.blocks for b in blk.bindings
                if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d")
    data = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    stats = collect(model.mod, [conv.args[0]], [1], {"x": data})
    padded = np.pad(data, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="reflect")
    assert stats[0].lo == padded.min() and stats[0].hi == padded.max()
