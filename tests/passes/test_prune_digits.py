"""The real digits CNN, trained here: accuracy after 30% global L2 pruning, with and without a
short PyTorch fine-tune of the pruned weights; the reported MACs match a hand count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _prune_nets import DigitsCNN
from sklearn.datasets import load_digits
from tvm import relax

import tvmcompress as tc
from tvmcompress.passes.prune_structured import PruneConfig, plan_pruning
from tvmcompress.passes.sensitivity import ratio_schedule, sensitivity
from tvmcompress.report import op_stats

TEST = 360


def _train(net, x, y, epochs, lr, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    net = _train(DigitsCNN(), x[:-TEST], y[:-TEST], epochs=15, lr=3e-3)
    model = tc.load(net, example_inputs=[x[-TEST:]])
    return net, model, x, y


def _accuracy(outputs, y) -> float:
    return float((np.argmax(outputs, 1) == y.numpy()[-TEST:]).mean())


def _smaller(net, plan):
    """The pruned architecture in torch, weights copied with the kept indices the plan gives."""
    k1, k2, h = (plan.kept_channels(n) for n in ("conv2d1", "conv2d2", "matmul0"))
    small = DigitsCNN((16, len(k1), len(k2)), len(h))
    feats = (k2[:, None] * 16 + np.arange(16)).ravel()      # flatten: channel c -> 16 features
    with torch.no_grad():
        small.c1.load_state_dict(net.c1.state_dict())
        small.c2.weight.copy_(net.c2.weight[k1]), small.c2.bias.copy_(net.c2.bias[k1])
        small.c3.weight.copy_(net.c3.weight[k2][:, k1]), small.c3.bias.copy_(net.c3.bias[k2])
        small.fc1.weight.copy_(net.fc1.weight[h][:, feats]), small.fc1.bias.copy_(net.fc1.bias[h])
        small.fc2.weight.copy_(net.fc2.weight[:, h]), small.fc2.bias.copy_(net.fc2.bias)
    return small, (len(k1), len(k2), len(h))


def test_digits_prune_30_percent_finetune_and_macs(digits):
    net, model, x, y = digits
    inputs = {model.inputs[0].name: x[-TEST:].numpy()}
    base = _accuracy(next(iter(tc.compile(model).run(inputs).values())), y)
    cfg = PruneConfig(ratio=0.3)
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    acc = _accuracy(next(iter(pruned.run(inputs).values())), y)
    plan = plan_pruning(relax.transform.FoldConstant()(model.mod), cfg)
    small, (c2, c3, h) = _smaller(net, plan)
    with torch.no_grad():
        torch_logits = small(x[-TEST:]).numpy()
    np.testing.assert_allclose(torch_logits, next(iter(pruned.run(inputs).values())),
                               rtol=1e-4, atol=1e-4)   # the recorded indices are the pruned model
    tuned = _accuracy(_train(small, x[:-TEST], y[:-TEST], epochs=3, lr=1e-3)(x[-TEST:])
                      .detach().numpy(), y)
    print(f"\ndigits accuracy: unpruned {base:.4f}, 30% L2 pruned {acc:.4f}, "
          f"pruned + 3-epoch fine-tune {tuned:.4f}; channels conv2d1 32->{c2}, "
          f"conv2d2 32->{c3}, matmul0 64->{h}")
    hand = TEST * (64 * 16 * 9 + 64 * c2 * 16 * 9 + 16 * c3 * c2 * 9 + c3 * 16 * h + h * 10)
    macs = sum(s.macs for s in op_stats(pruned.ir).values())
    assert macs == hand, (macs, hand)
    row = next(r for r in pruned.pass_log if r["layer"] == "(model)")
    assert f"{hand:,} MACs" in row["after"]
    assert base > 0.9 and tuned > 0.9 and acc > 0.5
    assert (c2, c3, h) != (32, 32, 64)


def test_digits_taylor_vs_l2_at_30_percent(digits):
    """Taylor (label-free and with the true labels as one-hot targets) against L2, printed."""
    _net, model, x, y = digits
    key = model.inputs[0].name
    inputs, train = {key: x[-TEST:].numpy()}, {key: x[:TEST].numpy()}
    onehot = np.eye(10, dtype="float32")[y[:TEST].numpy()]
    accs = {}
    for label, cfg in (("l2", PruneConfig(ratio=0.3)),
                       ("taylor", PruneConfig(ratio=0.3, criterion="taylor", calibration=train)),
                       ("taylor+labels", PruneConfig(ratio=0.3, criterion="taylor",
                                                     calibration=train,
                                                     targets={"y": onehot * 10}))):
        pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
        assert not [r for r in pruned.pass_log if r["layer"] == "(criterion)"]
        accs[label] = _accuracy(next(iter(pruned.run(inputs).values())), y)
    print(f"\ndigits accuracy at 30% pruning by criterion: {accs}")
    assert all(a > 0.5 for a in accs.values())


def test_sensitivity_table_and_schedule_fast(capsys):
    torch.manual_seed(0)
    model = tc.load(DigitsCNN().eval(), example_inputs=[torch.randn(1, 1, 8, 8)])
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    sens = sensitivity(model, [x], ratios=(0.5,))
    assert "cosine" in capsys.readouterr().out
    assert [(r.layer, r.ratio) for r in sens.rows] == [
        ("conv2d0", 0.5), ("conv2d1", 0.5), ("conv2d2", 0.5), ("matmul0", 0.5)]
    assert all(r.units.endswith(("8/16", "16/32", "32/64")) and r.macs < 1 for r in sens.rows)
    schedule = ratio_schedule(sens, budget=0.8)
    assert schedule and set(schedule.values()) == {0.5}
    with pytest.raises(tc.ConfigError, match="budget"):
        ratio_schedule(sens, budget=0.0)


@pytest.mark.slow
def test_sensitivity_with_accuracy_metric(digits, capsys):
    _net, model, x, y = digits
    inputs = [x[-TEST:].numpy()]
    sens = sensitivity(model, inputs, ratios=(0.5, 0.75),
                       metric=lambda outs: _accuracy(outs[0], y))
    table = capsys.readouterr().out
    assert "conv2d2" in table and "cosine" in table
    assert {r.layer for r in sens.rows} == {"conv2d0", "conv2d1", "conv2d2", "matmul0"}
    for layer in ("conv2d1", "matmul0"):
        rows = [r for r in sens.rows if r.layer == layer]
        assert rows[0].macs > rows[1].macs and rows[0].cosine >= rows[1].cosine - 0.05
    schedule = ratio_schedule(sens, budget=0.7)
    saved = sum(1 - max(r.macs for r in sens.rows if r.layer == k and r.ratio == v)
                for k, v in schedule.items())
    assert saved >= 0.3 - 1e-9, schedule
    with capsys.disabled():
        print(f"\n{table}ratio_schedule(budget=0.7 of MACs): {schedule}")
