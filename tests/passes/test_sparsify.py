"""Sparsify: parity of every storage format and kernel against the dense model with the same
zeroed weights (batch 1 and > 1, odd sizes, bias/ReLU epilogue, conv 1x1 and 3x3, int8), IR
checks (the BSR kernel is called; dense kept where decided), masks, and bad inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import tvmcompress as tc
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _sparse_math as sm
from tvmcompress.passes import run_passes
from tvmcompress.passes.sparsify import SparsifyConfig
from tvmcompress.reference import ort_run
from tvmcompress.targets import resolve_target


def _model(nodes, x_shape, y_shape, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def linear(x_shape, n: int, bias: bool = True, relu: bool = True, seed: int = 0):
    """x @ W (+ b) (relu) for an x of any rank."""
    rng = np.random.default_rng(seed)
    inits = {"W": rng.standard_normal((x_shape[-1], n)).astype(np.float32)}
    nodes, last = [helper.make_node("MatMul", ["x", "W"], ["h"])], "h"
    if bias:
        inits["b"] = rng.standard_normal(n).astype(np.float32)
        nodes.append(helper.make_node("Add", [last, "b"], ["hb"]))
        last = "hb"
    nodes.append(helper.make_node("Relu" if relu else "Identity", [last], ["y"]))
    return _model(nodes, x_shape, [*x_shape[:-1], n], inits)


def conv(k: int, stride: int, pad: int, c: int = 8, o: int = 16, hw: int = 9, batch: int = 1):
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal((o, c, k, k)).astype(np.float32),
             "b": rng.standard_normal(o).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["h"], strides=[stride] * 2,
                              pads=[pad] * 4), helper.make_node("Relu", ["h"], ["y"])]
    out = (hw + 2 * pad - k) // stride + 1
    return _model(nodes, [batch, c, hw, hw], [batch, o, out, out], inits)


def _calls(mod: tvm.IRModule, op: str) -> list:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(
        e, relax.Call) and getattr(e.op, "name", "") == op else None)
    return found


def _zeroed(model: onnx.ModelProto, **kw) -> tuple[onnx.ModelProto, np.ndarray]:
    """The model with W replaced by the weight the pass zeroes (``decide="dense"`` IR)."""
    cfg = tc.CompressConfig(passes=[SparsifyConfig(decide="dense", min_size=0, **kw)])
    with resolve_target("host").tvm_target:
        mod, _ = run_passes(tc.load(model).mod, cfg)
    (call,) = _calls(mod, "relax.matmul") + _calls(mod, "relax.nn.conv2d")
    weight = call.args[1].value.numpy()
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    zeroed.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    return zeroed, weight


def _pair(model, x, **kw):
    """Sparse-kernel output and onnxruntime's on the dense model with the same zeroed weights."""
    zeroed, weight = _zeroed(model, **kw)
    cfg = tc.CompressConfig(passes=[SparsifyConfig(decide="sparse", min_size=0, **kw)])
    cm = tc.compile(model, "host", config=cfg)
    return cm.run({"x": x})["y"], ort_run(zeroed, {"x": x})["y"], cm, weight


@pytest.mark.parametrize("pattern, block", [("block", None), ("block", (4, 4)),
                                            ("block", (2, 1)), ("unstructured", None),
                                            ("n:m", None)])
@pytest.mark.parametrize("x_shape", [(1, 64), (2, 7, 64)])
def test_matmul_parity(pattern, block, x_shape):
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    sparse, dense, cm_s, w = _pair(linear(x_shape, 48), x, sparsity=0.8, pattern=pattern,
                                   block=block)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)
    assert len(_calls(cm_s.ir, "relax.call_tir")) == 1
    assert not _calls(cm_s.ir, "relax.matmul") and not _calls(cm_s.ir, "relax.nn.relu")
    expected = 0.5 if pattern == "n:m" else 0.8
    assert abs((w == 0).mean() - expected) < 0.02
    row = cm_s.pass_log[0]
    assert row["storage"] == "bsr fp32" and row["fused"] == "bias+relu"


@pytest.mark.parametrize("bias, relu", [(False, False), (True, False), (False, True)])
def test_epilogues_and_odd_sizes(bias, relu):
    """Odd M and K, N = 40 (5 blocks of 8), each epilogue combination."""
    x = np.random.default_rng(3).standard_normal((5, 37)).astype(np.float32)
    sparse, dense, _, _ = _pair(linear((5, 37), 40, bias, relu), x, sparsity=0.7)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, stride, pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_conv_parity(k, stride, pad):
    x = np.random.default_rng(4).standard_normal((2, 8, 9, 9)).astype(np.float32)
    sparse, dense, cm, w = _pair(conv(k, stride, pad, batch=2), x, sparsity=0.75)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)
    assert not _calls(cm.ir, "relax.nn.conv2d") and abs((w == 0).mean() - 0.75) < 0.02
    assert cm.pass_log[0]["fused"] == "bias+relu"


def test_int8_block_sparse():
    """int8 values with per-column scales: the kernel matches numpy on the dequantized BSR."""
    model = linear((3, 64), 32, relu=False)
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    cfg = SparsifyConfig(sparsity=0.8, int8=True, decide="sparse", min_size=0)
    cm = tc.compile(model, "host", config=tc.CompressConfig(passes=[cfg]))
    (call,) = _calls(cm.ir, "relax.call_tir")
    data, indices, indptr, scale, bias = (a.value.numpy() for a in call.args[1].fields[1:])
    assert data.dtype == np.int8 and cm.pass_log[0]["storage"] == "bsr int8"
    block = tuple(int(b) for b in cm.pass_log[0]["block"].split("x"))  # the vector: 1x8, 1x16
    w = sm.Bsr(data, indices, indptr, scale, block, 64).dense()
    np.testing.assert_allclose(cm.run({"x": x})["y"], x @ w + bias, rtol=1e-4, atol=1e-4)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    kept = w != 0
    assert np.abs(w - weight)[kept].max() <= scale.max() / 2 + 1e-6


def test_auto_keeps_dense_where_slower_and_records_break_even():
    """A tiny layer at 30%: the measured cost model keeps it dense and says why."""
    cfg = SparsifyConfig(sparsity=0.3, decide="auto", min_size=0)
    cm = tc.compile(linear((1, 32), 16), "host", config=tc.CompressConfig(passes=[cfg]))
    (row,) = cm.pass_log
    assert row["storage"] == "dense" and row["cost"] == "measured"
    assert 0.3 < row["break_even"] <= 1.0 and row["note"] == "dense is faster"
    assert _calls(cm.ir, "relax.matmul") and not _calls(cm.ir, "relax.call_tir")


def test_auto_goes_sparse_where_it_pays():
    """A 1 x 512 x 1024 GEMV at 95% block sparsity: measured faster sparse, so sparse."""
    cfg = SparsifyConfig(sparsity=0.95, decide="auto")
    cm = tc.compile(linear((1, 512), 1024), "host", config=tc.CompressConfig(passes=[cfg]))
    (row,) = cm.pass_log
    assert row["storage"] == "bsr fp32" and row["sparse_ms"] < row["dense_ms"]
    assert row["break_even"] < 0.95


def test_global_granularity_ranks_across_layers():
    """One threshold over both layers: the layer with 10x larger weights keeps more."""
    rng = np.random.default_rng(7)
    inits = {"W1": rng.standard_normal((32, 32)).astype(np.float32) * 10,
             "W2": rng.standard_normal((32, 32)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = _model(nodes, [1, 32], [1, 32], inits)
    cfg = SparsifyConfig(sparsity=0.5, granularity="global", decide="dense", min_size=0)
    with resolve_target("host").tvm_target:
        mod, log = run_passes(tc.load(model).mod, tc.CompressConfig(passes=[cfg]))
    kept = [float((c.args[1].value.numpy() != 0).mean()) for c in _calls(mod, "relax.matmul")]
    assert kept[0] > 0.9 and kept[1] < 0.1 and abs(np.mean(kept) - 0.5) < 0.02
    assert [r["storage"] for r in log] == ["dense", "dense"]


def test_small_and_excluded_layers_untouched():
    model = linear((1, 32), 16)
    for cfg in (SparsifyConfig(sparsity=0.9), SparsifyConfig(sparsity=0.9, exclude=("matmul0",),
                                                             min_size=0)):
        cm = tc.compile(model, "host", config=tc.CompressConfig(passes=[cfg]))
        (w,) = [c.args[1].value.numpy() for c in _calls(cm.ir, "relax.matmul")]
        assert (w != 0).all() and cm.pass_log[0]["storage"] == "dense"


def test_masks():
    w = np.random.default_rng(6).standard_normal((16, 32)).astype(np.float32)
    keep = sm.expand(sm.block_mask(sm.block_scores(w, (4, 8)), 0.75), (4, 8))
    assert keep.mean() == 0.25 and (keep.reshape(4, 4, 4, 8).std(axis=(1, 3)) == 0).all()
    nm = sm.nm_mask(w, 2, 4)
    assert (nm.reshape(4, 4, 32).sum(axis=1) == 2).all()
    big = np.abs(w).reshape(4, 4, 32)
    assert (np.sort(big, axis=1)[:, 2:, :].sum() == (big * nm.reshape(4, 4, 32)).sum())
    cut = sm.threshold([np.abs(w), np.abs(w[:4]) * 10], 0.5)
    assert (np.abs(w[:4]) * 10 > cut).mean() > (np.abs(w) > cut).mean()


@pytest.mark.parametrize("kwargs, names", [
    ({"sparsity": 1.0}, ["sparsity", "1.0", "[0, 1)"]),
    ({"sparsity": -0.1}, ["sparsity", "-0.1"]),
    ({"sparsity": {"matmul0": 1.5}}, ["sparsity['matmul0']", "1.5"]),
    ({"nm": (4, 4)}, ["nm", "(4, 4)", "0 < n < m"]),
    ({"nm": (3,)}, ["nm", "(3,)"]),
    ({"block": (0, 8)}, ["block", "(0, 8)"]),
    ({"pattern": "diagonal"}, ["pattern", "diagonal", "n:m"]),
    ({"decide": "maybe"}, ["decide", "maybe", "auto"]),
])
def test_bad_config(kwargs, names):
    with pytest.raises(ConfigError) as err:
        SparsifyConfig(**kwargs)
    assert all(n in str(err.value) for n in names), str(err.value)


@pytest.mark.parametrize("kwargs, names", [
    ({"block": (1, 7)}, ["block", "(1, 7)", "32x16", "matmul0"]),
    ({"pattern": "n:m", "nm": (2, 5)}, ["nm", "5", "K = 32", "matmul0"]),
    ({"exclude": ("matmul9",)}, ["matmul9", "matmul0"]),
])
def test_bad_model_fit(kwargs, names):
    cfg = tc.CompressConfig(passes=[SparsifyConfig(sparsity=0.5, min_size=0, **kwargs)])
    with pytest.raises(ConfigError) as err:
        tc.compile(linear((1, 32), 16), "host", config=cfg)
    assert all(n in str(err.value) for n in names), str(err.value)


def test_config_round_trip():
    from tvmcompress.config import pass_config_from_dict

    cfg = SparsifyConfig(sparsity=0.9, pattern="n:m", nm=(1, 4), exclude=("matmul0",))
    assert pass_config_from_dict(cfg.to_dict()) == cfg
