"""Taylor criterion: gradients from Relax's AD on the IR equal PyTorch's; dead channels (zero
activation or zero gradient) score 0 and go first; a model Relax cannot differentiate falls
back to the activation criterion and says so; CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _prune_nets import DigitsCNN, silence
from tvm import relax

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _prune_importance as imp
from tvmcompress.passes import _prune_plan as pp
from tvmcompress.passes import run_passes
from tvmcompress.passes._prune_taylor import gradient_sums
from tvmcompress.passes.dependency import analyze, canonicalize
from tvmcompress.passes.prune_structured import PruneConfig

SAMPLES = 3


def _digits(seed=0):
    torch.manual_seed(seed)
    net = DigitsCNN().eval()
    model = tc.load(net, example_inputs=[torch.randn(1, 1, 8, 8)])
    x = np.random.default_rng(seed).standard_normal((SAMPLES, 1, 8, 8)).astype("float32")
    return net, model, x


def _torch_taylor(net, x, targets=None) -> dict[str, np.ndarray]:
    """Per member ``|sum(w * dL/dw)|`` over each unit's slice, summed over members (torch)."""
    net.zero_grad()
    y = net(torch.from_numpy(x))
    diff = y - torch.from_numpy(targets) if targets is not None else y
    (0.5 * (diff * diff).sum()).backward()

    def wg(p):
        return (p * p.grad).detach().double().numpy()

    def rows(p):
        return np.abs(wg(p).reshape(p.shape[0], -1).sum(1))

    def cols(p, axis=(0, 2, 3)):
        return np.abs(wg(p).sum(axis))

    fc1_in = np.abs(wg(net.fc1.weight).reshape(64, 32, 16).sum((0, 2)))
    return {"conv2d0": rows(net.c1.weight) + rows(net.c1.bias) + cols(net.c2.weight),
            "conv2d1": rows(net.c2.weight) + rows(net.c2.bias) + cols(net.c3.weight),
            "conv2d2": rows(net.c3.weight) + rows(net.c3.bias) + fc1_in,
            "matmul0": rows(net.fc1.weight) + rows(net.fc1.bias) + cols(net.fc2.weight, 0)}


def _ir_taylor(model, x, targets=None):
    mod = canonicalize(relax.transform.FoldConstant()(model.mod))
    coupling = analyze(mod)
    groups = [g for g in coupling.groups if g.prunable]
    cfg = PruneConfig(ratio=0.3, criterion="taylor", calibration={model.inputs[0].name: x},
                      targets=None if targets is None else {"y": targets})
    notes: list[str] = []
    criterion, data = pp.criterion_data(mod, coupling, "taylor", cfg, notes)
    assert (criterion, notes) == ("taylor", [])
    return pp.scores(coupling, groups, criterion, data), coupling


@pytest.mark.parametrize("with_targets", [False, True])
def test_taylor_scores_equal_torch_reference(with_targets):
    net, model, x = _digits()
    targets = (np.random.default_rng(1).standard_normal((SAMPLES, 10)).astype("float32")
               if with_targets else None)
    scores, coupling = _ir_taylor(model, x, targets)
    ref = _torch_taylor(net, x, targets)
    assert set(scores) == set(ref)
    for name, want in ref.items():
        order = np.argsort(coupling.group(name).channels[name])  # units are channel order
        np.testing.assert_allclose(scores[name][order], want, rtol=2e-3,
                                   atol=1e-5 * want.max(), err_msg=name)


def test_dead_channels_score_zero_and_are_pruned_first():
    net, model, x = _digits(seed=3)
    silence(net.c2, None, [3, 4])                # zero activation on every input
    with torch.no_grad():
        net.c3.weight[:, 10] = 0                 # channel 10 is read by nobody: zero gradient
    model = tc.load(net, example_inputs=[torch.randn(1, 1, 8, 8)])
    scores, _ = _ir_taylor(model, x)
    assert np.all(scores["conv2d1"][[3, 4, 10]] == 0)
    assert np.all(np.delete(scores["conv2d1"], [3, 4, 10]) > 0)
    cfg = PruneConfig(ratio={"conv2d1": 3 / 32}, criterion="taylor", round_to=1, min_channels=1,
                      calibration={model.inputs[0].name: x})
    base = tc.compile(model).run({model.inputs[0].name: x[:1]})
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    out = pruned.run({model.inputs[0].name: x[:1]})
    for name, value in base.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-4, atol=1e-5)
    row = next(r for r in pruned.pass_log if r["layer"] == "conv2d1")
    assert (row["before"], row["after"]) == (32, 29)


def test_transformer_gradients_through_layer_norm_gelu_and_heads_equal_torch():
    """Post-norm encoder: dL/dW of the QKV and FFN projections pass through both LayerNorms,
    the erf GELU, softmax and the scalar ``take`` of q/k/v (gradients registered here)."""
    torch.manual_seed(0)
    net = zoo.transformer().eval()
    model = tc.load(net, example_inputs=[torch.randn(1, 16, 64)])
    mod = canonicalize(relax.transform.FoldConstant()(model.mod))
    rng = np.random.default_rng(0)
    x, t = (rng.standard_normal((2, 16, 64)).astype("float32") for _ in range(2))
    grads = gradient_sums(mod, analyze(mod), {model.inputs[0].name: x}, {"y": t})
    net.zero_grad()
    (0.5 * ((net(torch.from_numpy(x)) - torch.from_numpy(t)) ** 2).sum()).backward()
    by_shape = {w.shape: g for (call, _), (w, g) in grads.items()
                if call.op.name.endswith("matmul")}
    for shape, param in (((64, 192), net.qkv.weight), ((64, 128), net.ffn[0].weight)):
        got, want = by_shape[shape].T, param.grad.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def _floor_model():
    """conv -> relu -> conv -> Floor: Relax has no gradient for floor."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((16, 3, 3, 3)).astype("float32"), "w1"),
             nh.from_array(rng.standard_normal((4, 16, 1, 1)).astype("float32"), "w2")]
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"]), oh.make_node("Conv", ["r", "w2"], ["d"]),
             oh.make_node("Floor", ["d"], ["y"])]
    graph = oh.make_graph(nodes, "padded", [oh.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [oh.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_no_gradient_falls_back_to_activation_and_says_so():
    model = tc.load(_floor_model())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")
    cfg = PruneConfig(ratio=0.5, criterion="taylor", calibration={"x": x}, protect_first=False)
    _out, log = run_passes(model.mod, tc.CompressConfig(passes=[cfg]))
    note = next(r["note"] for r in log if r["layer"] == "(criterion)")
    assert "relax.floor" in note and "activation" in note
    assert next(r for r in log if r["layer"] == "conv2d0")["after"] == 8


def test_taylor_numpy_helper_sums_signed_then_abs_per_member():
    wg = np.array([[1.0, -2.0], [-1.0, 3.0]])    # rows: index along axis 0
    unit = np.array([0, 0])                       # both rows belong to unit 0
    np.testing.assert_allclose(imp.taylor([(wg, 0, unit)], 1), [1.0])     # |(-1) + 2|
    np.testing.assert_allclose(imp.taylor([(wg, 1, np.array([0, 1]))] * 2, 2), [0.0, 2.0])


def test_config_and_cli():
    import argparse

    from tvmcompress.cli.compress_flags import add_compress_arguments, compress_config

    with pytest.raises(ConfigError, match="calibration"):
        PruneConfig(ratio=0.3, criterion="taylor")
    with pytest.raises(ConfigError, match="targets"):
        PruneConfig(ratio=0.3, targets={"y": np.zeros(1)})
    parser = argparse.ArgumentParser()
    add_compress_arguments(parser)
    (cfg,) = compress_config(parser.parse_args(
        ["--prune", "0.3", "--prune-criterion", "taylor", "--prune-calib", "c.npz"])).passes
    assert (cfg.criterion, cfg.calibration) == ("taylor", "c.npz")
    with pytest.raises(ConfigError, match="--prune-calib"):
        compress_config(parser.parse_args(["--prune", "0.3", "--prune-criterion", "taylor"]))
