"""PruneStructured: channels silenced in torch are removed exactly, across residual adds,
depthwise convs, concat, flatten and attention heads; IR shapes shrink; bad input is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from _prune_nets import Concatish, MobileNetish, ResNetish, silence
from tvm import relax

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.errors import ConfigError
from tvmcompress.passes import run_passes
from tvmcompress.passes.prune_structured import PruneConfig

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _load(module, shape, seed=0):
    torch.manual_seed(seed)
    model = tc.load(module.eval(), example_inputs=[torch.randn(*shape)])
    x = {model.inputs[0].name: np.random.default_rng(seed).standard_normal(shape)
         .astype("float32")}
    return model, x


def _weights(ir: tvm.IRModule) -> dict[str, tuple[int, ...]]:
    """Weight shape of every conv2d/matmul with a constant weight, named like the pass does."""
    out, counts = {}, {"conv2d": 0, "matmul": 0}
    for block in ir["main"].body.blocks:
        for b in block.bindings:
            op = getattr(getattr(b.value, "op", None), "name", "")
            kind = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}.get(op)
            if kind:
                w = b.value.args[1]
                out[f"{kind}{counts[kind]}"] = tuple(int(d) for d in w.ty.shape.values)
                counts[kind] += 1
    return out


def _check_exact(model, x, remove, expected_shapes):
    base = tc.compile(model).run(x)
    cfg = tc.CompressConfig(passes=[PruneConfig(remove=remove)])
    pruned = tc.compile(model, config=cfg)
    out = pruned.run(x)
    for name, value in base.items():
        assert out[name].shape == value.shape, name
        np.testing.assert_allclose(out[name], value, **TOL, err_msg=f"output {name}")
    shapes = _weights(pruned.ir)
    for layer, shape in expected_shapes.items():
        assert shapes[layer] == shape, f"{layer}: {shapes[layer]} != {shape}"
    return pruned


def test_resnet_residual_groups_exact():
    net = ResNetish()
    silence(net.stem[0], net.stem[1], [1, 5])       # residual stream: stem ...
    silence(net.b1b[0], net.b1b[1], [1, 5])         # ... and the block it is added to
    silence(net.b1a[0], net.b1a[1], [0, 3, 7])      # inside the block
    silence(net.down[0], net.down[1], [2])          # second residual: downsample + b2b
    silence(net.b2b[0], net.b2b[1], [2])
    model, x = _load(net, (1, 3, 16, 16))
    _check_exact(model, x, {"conv2d0": [1, 5], "conv2d1": [0, 3, 7], "conv2d5": [2]}, {
        "conv2d0": (14, 3, 3, 3), "conv2d1": (13, 14, 3, 3), "conv2d2": (14, 13, 3, 3),
        "conv2d3": (31, 14, 1, 1), "conv2d4": (32, 14, 3, 3), "conv2d5": (31, 32, 3, 3),
        "matmul0": (31, 10)})


def test_mobilenet_depthwise_inverted_residual_exact():
    net = MobileNetish()
    silence(net.stem[0], net.stem[1], [3])
    for expand, dw, project in net.blocks:
        silence(project[0], project[1], [3])
    silence(net.blocks[0][0][0], net.blocks[0][0][1], [5, 9])  # expand ...
    silence(net.blocks[0][1][0], net.blocks[0][1][1], [5, 9])  # ... and its depthwise conv
    silence(net.blocks[1][0][0], net.blocks[1][0][1], [0])
    silence(net.blocks[1][1][0], net.blocks[1][1][1], [0])
    model, x = _load(net, (1, 3, 16, 16))
    pruned = _check_exact(model, x, {"conv2d0": [3], "conv2d1": [5, 9], "conv2d4": [0]}, {
        "conv2d0": (15, 3, 3, 3), "conv2d1": (62, 15, 1, 1), "conv2d2": (62, 1, 3, 3),
        "conv2d3": (15, 62, 1, 1), "conv2d5": (63, 1, 3, 3), "conv2d6": (15, 63, 1, 1),
        "matmul0": (15, 10)})
    groups = [int(b.value.attrs.groups) for blk in pruned.ir["main"].body.blocks
              for b in blk.bindings if getattr(b.value, "op", None) == tvm.ir.Op.get(
                  "relax.nn.conv2d")]
    assert groups == [1, 1, 62, 1, 1, 63, 1]


def test_concat_inception_dense_and_flatten_exact():
    net = Concatish()
    silence(net.a[0], net.a[1], [1])
    silence(net.b[0], net.b[1], [4])
    silence(net.dense[0], net.dense[1], [0])
    silence(net.head, None, [6])                   # flatten: features 6*16 .. 7*16 of fc
    model, x = _load(net, (1, 3, 16, 16))
    _check_exact(model, x, {"conv2d1": [1], "conv2d2": [4], "conv2d3": [0], "conv2d4": [6]}, {
        "conv2d1": (15, 16, 1, 1), "conv2d2": (15, 16, 3, 3), "conv2d3": (15, 30, 3, 3),
        "conv2d4": (7, 45, 1, 1), "matmul0": (112, 10)})


def test_transformer_heads_and_ffn_exact():
    net = zoo.transformer()
    with torch.no_grad():
        v_head2 = slice(128 + 32, 128 + 48)        # qkv rows: q 0..63, k 64..127, v 128..191
        net.qkv.weight[v_head2] = 0
        net.qkv.bias[v_head2] = 0
        net.ffn[0].weight[[5, 77]] = 0
        net.ffn[0].bias[[5, 77]] = 0
    model, x = _load(net, (1, 16, 64))
    pruned = _check_exact(model, x, {"matmul0": [32], "matmul4": [5, 77]}, {
        "matmul0": (64, 144), "matmul3": (48, 64), "matmul4": (64, 126),
        "matmul5": (126, 64)})
    reshapes = [tuple(int(d) for d in b.var.ty.shape.values) for blk in pruned.ir["main"]
                .body.blocks for b in blk.bindings
                if getattr(b.value, "op", None) == tvm.ir.Op.get("relax.reshape")]
    assert reshapes == [(1, 16, 3, 3, 16), (1, 16, 48)]
    rows = [r for r in pruned.pass_log if r["layer"] == "matmul0"]
    assert rows[0]["unit"] == "heads" and (rows[0]["before"], rows[0]["after"]) == (4, 3)


def test_global_l2_prunes_only_zero_groups_exactly():
    """Zero *every* slice of some units (weights, bias, consumer rows): lowest L2, exact."""
    net = ResNetish()
    silence(net.b1a[0], net.b1a[1], [2, 6])
    with torch.no_grad():
        net.b1b[0].weight[:, [2, 6]] = 0
    model, x = _load(net, (1, 3, 16, 16))
    base = tc.compile(model).run(x)
    ratio = 2 / (16 + 32 + 32)                      # prunable units: conv2d1, conv2d3/5, conv2d4
    cfg = PruneConfig(ratio=ratio, round_to=1, min_channels=1)
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    out = pruned.run(x)
    for name, value in base.items():
        np.testing.assert_allclose(out[name], value, **TOL, err_msg=name)
    assert _weights(pruned.ir)["conv2d1"] == (14, 16, 3, 3)


def test_ratio_zero_and_all_excluded_leave_ir_unchanged():
    model, _ = _load(ResNetish(), (1, 3, 16, 16))
    mod = relax.transform.FoldConstant()(model.mod)
    for cfg in (PruneConfig(ratio=0.0),
                PruneConfig(ratio=0.5, exclude=("conv2d1", "conv2d3", "conv2d4"))):
        out, log = run_passes(mod, tc.CompressConfig(passes=[cfg]))
        tvm.ir.assert_structural_equal(out, mod)
        assert "nothing pruned" in log[-1]["note"], log[-1]


def test_no_prunable_group_says_why():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))   # its only group is the output
    model, _ = _load(net, (1, 3, 8, 8))
    _out, log = run_passes(model.mod, tc.CompressConfig(passes=[PruneConfig(ratio=0.5)]))
    assert "unsafe: reaches a model output" in log[0]["note"]
    assert log[-1]["note"].startswith("nothing pruned")


@pytest.mark.parametrize("kwargs, field", [
    ({"ratio": 1.0}, "ratio"), ({"ratio": -0.1}, "ratio"), ({"ratio": {"conv2d1": 1.5}}, "ratio"),
    ({"ratio": 0.3, "criterion": "hessian"}, "criterion"), ({"ratio": 0.3, "round_to": 0},
                                                           "round_to"),
    ({}, "ratio"), ({"ratio": 0.3, "criterion": "activation"}, "calibration")])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PruneConfig(**kwargs)


def test_unknown_or_unsafe_layer_names_are_errors():
    model, _ = _load(ResNetish(), (1, 3, 16, 16))
    for cfg, match in ((PruneConfig(ratio=0.3, exclude=("conv9",)), "conv9"),
                       (PruneConfig(remove={"matmul0": [0]}), "model output"),
                       (PruneConfig(remove={"conv2d1": list(range(16))}), "every channel"),
                       (PruneConfig(remove={"conv2d1": [99]}), r"\[0, 16\)")):
        with pytest.raises(ConfigError, match=match):
            run_passes(model.mod, tc.CompressConfig(passes=[cfg]))


def test_cli_flags_build_the_config():
    import argparse

    from tvmcompress.cli.compress_flags import add_compress_arguments, compress_config

    parser = argparse.ArgumentParser()
    add_compress_arguments(parser)
    (cfg,) = compress_config(parser.parse_args(
        ["--prune", "0.3", "--prune-exclude", "conv2d1,matmul0", "--prune-round-to", "4",
         "--prune-criterion", "l1"])).passes
    assert cfg == PruneConfig(ratio=0.3, exclude=("conv2d1", "matmul0"), round_to=4,
                              criterion="l1")
    assert compress_config(parser.parse_args([])).passes == ()
    with pytest.raises(ConfigError, match="ratio"):
        compress_config(parser.parse_args(["--prune", "1.5"]))


def _scaled_conv_model(scale):
    """x -> conv -> Mul(per-channel scale, as an unfolded BatchNorm) -> relu -> 1x1 conv."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32"), "w1"),
             nh.from_array(np.asarray(scale, "float32").reshape(1, 8, 1, 1), "s"),
             nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype("float32"), "w2")]
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             oh.make_node("Mul", ["c", "s"], ["m"]), oh.make_node("Relu", ["m"], ["r"]),
             oh.make_node("Conv", ["r", "w2"], ["y"])]
    graph = oh.make_graph(nodes, "scaled", [oh.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [oh.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_bn_scale_criterion_removes_zero_scale_channel_exactly():
    model = tc.load(_scaled_conv_model([1, 2, 1, 0, 3, 1, 2, 1]))
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype("float32")}
    base = tc.compile(model).run(x)["y"]
    cfg = PruneConfig(ratio=1 / 8, criterion="bn", round_to=1, min_channels=1,
                      protect_first=False)
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    np.testing.assert_allclose(pruned.run(x)["y"], base, **TOL)
    assert _weights(pruned.ir) == {"conv2d0": (7, 3, 3, 3), "conv2d1": (4, 7, 1, 1)}


def test_activation_criterion_finds_dead_channels():
    from _prune_nets import DigitsCNN

    net = DigitsCNN()
    silence(net.c2, None, [3, 4, 10, 20])            # relu(0) = 0: dead on every input
    model, x = _load(net, (1, 1, 8, 8))
    calib = {model.inputs[0].name: np.random.default_rng(2).standard_normal(
        (4, 1, 8, 8)).astype("float32")}
    cfg = PruneConfig(ratio={"conv2d1": 4 / 32}, criterion="activation", round_to=1,
                      min_channels=1, calibration=calib)
    base = tc.compile(model).run(x)
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    for name, value in base.items():
        np.testing.assert_allclose(pruned.run(x)[name], value, **TOL)
    assert _weights(pruned.ir)["conv2d1"] == (28, 16, 3, 3)
