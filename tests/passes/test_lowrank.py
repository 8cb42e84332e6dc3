"""LowRankSplit: exact at full rank, error falls with rank, IR shapes, skips with reasons."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress import reference, zoo
from tvmcompress.config import CompressConfig
from tvmcompress.passes import _lowrank_math as lm
from tvmcompress.passes import run_passes
from tvmcompress.passes.lowrank import LowRankConfig

FORCE = {"min_gain": 100.0}  # split even where it does not pay: exactness tests


def _dense_model(seed: int = 0) -> onnx.ModelProto:
    """y = (x @ W + b) and z = x @ v (activation x activation): one eligible matmul."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((64, 48)).astype("float32"), "W")
    b = numpy_helper.from_array(rng.standard_normal(48).astype("float32"), "b")
    nodes = [oh.make_node("MatMul", ["x", "W"], ["xw"]), oh.make_node("Add", ["xw", "b"], ["y"]),
             oh.make_node("MatMul", ["x", "v"], ["z"])]
    graph = oh.make_graph(
        nodes, "dense",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
         oh.make_tensor_value_info("v", TensorProto.FLOAT, [64, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, 48]),
         oh.make_tensor_value_info("z", TensorProto.FLOAT, [4, 8])], [w, b])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _conv_net() -> onnx.ModelProto:
    """Convs with asymmetric stride, padding and dilation, a grouped conv and a linear head."""
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=(2, 1), padding=(1, 2)), nn.ReLU(),
        nn.Conv2d(16, 24, (3, 5), padding=(2, 1), dilation=(2, 1)), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(24, 16, 3, stride=(1, 2), padding=(0, 1), dilation=(1, 2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    return zoo.export(net, (torch.randn(1, 3, 20, 18),), ["x"], ["y"])


def _compile(model, shapes, **cfg):
    config = CompressConfig(passes=[LowRankConfig(**cfg)])
    return tc.compile(tc.load(model, input_shapes=shapes), config=config)


def _ops(mod, name):
    """(weight shape or None, attrs) of each call to ``name`` in main, in order."""
    from tvm import relax
    from tvm.ir.expr import Constant

    found = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == name:
            w = e.args[1]
            found.append((tuple(w.value.shape) if isinstance(w, Constant) else None, e.attrs))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def test_full_rank_mlp_matches_onnxruntime(fp32_tol):
    model = zoo.build("mlp")
    x = {"x": np.random.default_rng(1).standard_normal((2, 64)).astype("float32")}
    cm = _compile(model, {"x": [2, 64]}, rank_ratio=1.0, round_to=1, **FORCE)
    assert all(r["split"] for r in cm.pass_log), cm.pass_log
    np.testing.assert_allclose(cm.run(x)["y"], reference.ort_run(model, x)["y"], **fp32_tol)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_full_rank_convs_match_onnxruntime(mode, fp32_tol):
    model = _conv_net()
    x = {"x": np.random.default_rng(2).standard_normal((1, 3, 20, 18)).astype("float32")}
    cm = _compile(model, {"x": [1, 3, 20, 18]}, rank_ratio=1.0, round_to=1, conv_mode=mode,
                  **FORCE)
    rows = {r["layer"]: r for r in cm.pass_log}
    assert [rows[f"conv2d{i}"]["mode"] for i in (0, 1, 3)] == [mode] * 3
    assert "groups=4" in rows["conv2d2"]["reason"] and not rows["conv2d2"]["split"]
    np.testing.assert_allclose(cm.run(x)["y"], reference.ort_run(model, x)["y"], **fp32_tol)


def test_matmul_ir_two_thin_matmuls_bias_after():
    model = tc.load(_dense_model())
    out, log = run_passes(model.mod, CompressConfig(passes=[LowRankConfig(rank=16)]))
    assert [w for w, _ in _ops(out, "relax.matmul")] == [(64, 16), (16, 48), None]
    assert [r["split"] for r in log] == [True, False]
    assert "not a constant" in log[1]["reason"]
    assert log[0]["macs_before"] == 4 * 64 * 48 and log[0]["macs_after"] == 4 * 16 * 112
    bindings = {b.var: b.value for b in out["main"].body.blocks[0].bindings}
    (add,) = [v for v in bindings.values() if getattr(v, "op", None) == tvm.ir.Op.get("relax.add")]
    assert tuple(bindings[add.args[0]].args[1].value.shape) == (16, 48), "bias after 2nd matmul"


def test_conv_ir_shapes_and_attrs():
    model = tc.load(_conv_net(), input_shapes={"x": [1, 3, 20, 18]})
    cfg = LowRankConfig(rank={"conv2d1": 8, "conv2d3": 4}, conv_mode="spatial", **FORCE)
    out, _ = run_passes(model.mod, CompressConfig(passes=[cfg]))
    convs = [(w, [int(v) for v in a.strides], [int(v) for v in a.padding],
              [int(v) for v in a.dilation], int(a.groups)) for w, a in _ops(out, "relax.nn.conv2d")]
    assert convs == [((16, 3, 3, 3), [2, 1], [1, 2, 1, 2], [1, 1], 1),   # untouched
                     ((8, 16, 3, 1), [1, 1], [2, 0, 2, 0], [2, 1], 1),   # H part
                     ((24, 8, 1, 5), [1, 1], [0, 1, 0, 1], [1, 1], 1),   # W part
                     ((24, 6, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 4),   # grouped: untouched
                     ((4, 24, 3, 1), [1, 1], [0, 0, 0, 0], [1, 1], 1),
                     ((16, 4, 1, 3), [1, 2], [0, 1, 0, 1], [1, 2], 1)]
    out, _ = run_passes(model.mod, CompressConfig(passes=[
        LowRankConfig(rank={"conv2d1": 8}, conv_mode="channel", **FORCE)]))
    assert [w for w, _ in _ops(out, "relax.nn.conv2d")][1:3] == [(8, 16, 3, 5), (24, 8, 1, 1)]


def test_nothing_pays_leaves_ir_unchanged():
    """A 10-wide head at energy 1.0 and an activation matmul: same IR, reasons recorded."""
    model = tc.load(_dense_model())
    folded = tvm.relax.transform.FoldConstant()(model.mod)
    out, log = run_passes(model.mod, CompressConfig(passes=[LowRankConfig(energy=1.0)]))
    tvm.ir.assert_structural_equal(out, folded)
    assert "min_gain" in log[0]["reason"] and not log[0]["split"]


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 24), n=st.integers(2, 24), seed=st.integers(0, 2**16))
def test_svd_error_falls_with_rank(m, n, seed):
    w = np.random.default_rng(seed).standard_normal((m, n))
    errors = [lm.matmul_factors_error(w, r) for r in range(1, min(m, n) + 1)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-12


def test_model_error_falls_with_rank():
    model = zoo.build("mlp")
    x = {"x": np.random.default_rng(3).standard_normal((8, 64)).astype("float32")}
    ref = reference.ort_run(model, x)["y"]
    errs = [np.linalg.norm(_compile(model, {"x": [8, 64]}, rank_ratio=q, round_to=1,
                                    **FORCE).run(x)["y"] - ref) for q in (0.1, 0.3, 0.6, 1.0)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4, errs


@pytest.mark.parametrize("kwargs, match", [
    ({"energy": 0.0}, r"energy must be in \(0, 1\], got 0.0"),
    ({"energy": 1.5}, r"energy must be in \(0, 1\], got 1.5"),
    ({"rank": 0}, r"rank\['rank'\] must be an int >= 1, got 0"),
    ({"rank": {"matmul0": -2}}, r"rank\['matmul0'\] must be an int >= 1"),
    ({"energy": 0.9, "rank": 4}, r"exactly one of .* got \['energy', 'rank'\]"),
    ({}, "exactly one of"),
    ({"energy": 0.9, "conv_mode": "tucker"}, "conv_mode must be one of"),
    ({"energy": 0.9, "round_to": 0}, "round_to must be >= 1"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(tc.ConfigError, match=match):
        LowRankConfig(**kwargs)


def test_rank_too_large():
    """Per-layer rank too large: an error naming the layer; a global one: skipped, reason."""
    model = tc.load(_dense_model())
    with pytest.raises(tc.ConfigError, match=r"rank\['matmul0'\] = 65 exceeds the full rank 48"):
        run_passes(model.mod, CompressConfig(passes=[LowRankConfig(rank={"matmul0": 65})]))
    with pytest.raises(tc.ConfigError, match=r"unknown layers \['dense9'\]"):
        run_passes(model.mod, CompressConfig(passes=[LowRankConfig(rank={"dense9": 2})]))
    _, log = run_passes(model.mod, CompressConfig(passes=[LowRankConfig(rank=100)]))
    assert log[0]["reason"] == "rank 100 > full rank 48" and not log[0]["split"]


def test_exclude_and_budget():
    model = tc.load(zoo.build("transformer"), input_shapes={"x": [2, 16, 64]})
    _, log = run_passes(model.mod, CompressConfig(passes=[LowRankConfig(
        macs_budget=0.6, exclude=("matmul0",))]))
    rows = {r["layer"]: r for r in log}
    assert rows["matmul0"]["reason"] == "excluded by config"
    total = rows["(model)"]["macs_before"]
    assert total == sum(r["macs_before"] for r in log[:-1])
    assert sum(r["macs_after"] for r in log[:-1]) == rows["(model)"]["macs_after"] <= 0.6 * total
    assert sum(r["split"] is True for r in log) >= 2
    assert rows["(model)"]["reason"].startswith("macs_budget 60%: reached")
    _, log = run_passes(model.mod, CompressConfig(passes=[LowRankConfig(macs_budget=0.05)]))
    assert "unreachable" in log[-1]["reason"]


def test_config_round_trip_drops_calibration():
    cfg = LowRankConfig(rank={"matmul0": 4}, calibration={"x": np.zeros((2, 64))})
    data = cfg.to_dict()
    assert data["data"]["calibration"] is None
    assert CompressConfig.from_dict(CompressConfig(passes=[cfg]).to_dict()).passes == (cfg,)


def test_cli_flags():
    import argparse

    from tvmcompress.cli.compress_flags import add_compress_arguments, compress_config

    parser = argparse.ArgumentParser()
    add_compress_arguments(parser)
    (cfg,) = compress_config(parser.parse_args(["--lowrank", "0.9"])).passes
    assert cfg == LowRankConfig(energy=0.9)
    args = parser.parse_args(["--lowrank-rank", "matmul0=32,conv2d1=8", "--lowrank-conv-mode",
                              "spatial"])
    (cfg,) = compress_config(args).passes
    assert cfg.rank == {"matmul0": 32, "conv2d1": 8} and cfg.conv_mode == "spatial"
    assert compress_config(parser.parse_args([])).passes == ()
    with pytest.raises(tc.ConfigError, match="exactly one"):
        compress_config(parser.parse_args(["--lowrank", "0.9", "--lowrank-rank-ratio", "0.5"]))
