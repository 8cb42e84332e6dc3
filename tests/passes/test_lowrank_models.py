"""LowRankSplit on real weights: a CNN trained on sklearn's digits (accuracy vs MACs, plain and
whitened SVD) and all-MiniLM-L6-v2 (embedding cosine vs MACs, slow). Tables are printed
(``pytest -s``) so the trade-off is visible, and the assertions hold the bounds measured here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tvm import relax

import tvmcompress as tc
from tvmcompress import reference, zoo
from tvmcompress.config import CompressConfig
from tvmcompress.passes import _lowrank_math as lm
from tvmcompress.passes import _lowrank_plan as lp
from tvmcompress.passes._lowrank_calib import input_grams
from tvmcompress.passes.lowrank import LowRankConfig
from tvmcompress.report import op_stats

ENERGIES = (None, 0.99, 0.95, 0.9, 0.8, 0.6)


def _macs(cm: tc.CompiledModel) -> int:
    return sum(s.macs for s in op_stats(cm.ir).values())


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained for a few seconds on 1400 digits; the other 397 are the test set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 1, 8, 8)
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is 5x faster on a busy 2-core machine
    try:
        order = torch.Generator().manual_seed(1)
        for _ in range(12):
            for idx in torch.randperm(1400, generator=order).split(50):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model = zoo.export(net.eval(), (torch.from_numpy(x[1400:]),), ["x"], ["y"])
    return model, x, y


def _accuracy(cm, x, y) -> tuple[float, np.ndarray]:
    logits = cm.run({"x": x[1400:]})["y"]
    return float((logits.argmax(1) == y[1400:]).mean()), logits


def test_digits_accuracy_vs_macs(digits):
    model, x, y = digits
    loaded = tc.load(model)
    rows = []
    for energy in ENERGIES:
        passes = [LowRankConfig(energy=energy)] if energy else []
        cm = tc.compile(loaded, config=CompressConfig(passes=passes))
        acc, logits = _accuracy(cm, x, y)
        split = sum(r["split"] for r in cm.pass_log)
        rows.append((energy or 1.0, _macs(cm), acc, split, logits))
    base_macs, base_acc = rows[0][1], rows[0][2]
    print("\ndigits CNN (test set 397): energy | MMACs | MACs vs base | accuracy | layers split")
    for energy, macs, acc, split, _ in rows:
        print(f"  {energy:5.2f} | {macs / 1e6:7.2f} | {macs / base_macs:6.1%} | {acc:.4f} | "
              f"{split}")
    assert base_acc >= 0.9, "the digits CNN should train to >= 90% in seconds"
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert rows[1][2] >= base_acc - 0.01, "energy 0.99 must keep accuracy within a point"
    assert rows[-1][1] < 0.8 * base_macs, "energy 0.6 should cut at least 20% of the MACs"


def _layer_errors(mod, grams_fit, grams_test, ratio):
    """Per layer: relative output error on held-out inputs, plain vs whitened SVD, same rank."""
    out = {}
    for layer in [x for x in lp.find_layers(mod["main"]) if x.reason is None]:
        plain, white = (lp.options(layer, "channel", g)[0] for g in (None, grams_fit[layer.name]))
        w = layer.weight.astype("float64")
        m = w if layer.kind == "matmul" else lm.channel_matrix(w)
        rank = lm.round_rank(math.ceil(ratio * plain.full), 4, plain.full)
        g = grams_test[layer.name]
        errs = []
        for opt in (plain, white):
            a, b = opt.factors.split(rank)
            d = m - a @ b
            errs.append(np.trace(d.T @ g @ d) / np.trace(m.T @ g @ m))
        out[layer.name] = errs
    return out


@pytest.mark.slow
def test_digits_whitening_lowers_layer_error(digits):
    """Whitened by training images, each layer's output error on the test images falls; the
    end-to-end effect is printed (measured here: logit cosine up, accuracy not)."""
    model, x, y = digits
    loaded = tc.load(model)
    mod = relax.transform.FoldConstant()(loaded.mod)
    layers = [layer for layer in lp.find_layers(mod["main"]) if layer.reason is None]
    fit, test = (input_grams(mod, layers, {"x": d}) for d in (x[:397], x[1400:]))
    print("\ndigits CNN, held-out output error per layer (plain -> whitened):")
    for ratio in (0.25, 0.125):
        errs = _layer_errors(mod, fit, test, ratio)
        print(f"  rank_ratio {ratio}: " + ", ".join(
            f"{k} {p:.3f}->{w:.3f}" for k, (p, w) in errs.items()))
        assert all(w < p for p, w in errs.values()), errs
    _, ref = _accuracy(tc.compile(loaded), x, y)
    for calib in (None, {"x": x[:397]}):
        cfg = LowRankConfig(rank_ratio=0.25, exclude=("matmul1",), calibration=calib)
        acc, logits = _accuracy(tc.compile(loaded, config=CompressConfig(passes=[cfg])), x, y)
        print(f"  end to end, rank_ratio 0.25, head kept: {'whitened' if calib else 'plain'} "
              f"accuracy {acc:.4f}, logit cosine {reference.fidelity(ref, logits)['cosine']:.4f}")


@pytest.mark.slow
def test_minilm_cosine_vs_macs():
    """Mean-pooled embeddings of 8 random-token sentences (seq 32) vs onnxruntime's."""
    model = zoo.minilm()
    names = ("input_ids", "attention_mask", "token_type_ids")
    loaded = tc.load(model, input_shapes={n: [8, 32] for n in names})
    ids = np.random.default_rng(0).integers(1000, 30000, (8, 32), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[4:, 20:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def embed(hidden):
        m = mask[..., None].astype("float64")
        e = (hidden * m).sum(1) / m.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = embed(reference.ort_run(model, inputs)["last_hidden_state"])
    rows = []
    for energy in (None, 0.99, 0.95, 0.9, 0.8, 0.6):
        passes = [LowRankConfig(energy=energy)] if energy else []
        cm = tc.compile(loaded, config=CompressConfig(passes=passes))
        cos = (embed(cm.run(inputs)["last_hidden_state"]) * ref).sum(1)
        split = sum(r["split"] for r in cm.pass_log)
        rows.append((energy or 1.0, _macs(cm), float(cos.mean()), float(cos.min()), split))
    print("\nall-MiniLM-L6-v2 b8 s32: energy | MMACs | vs base | cos mean | cos min | split")
    for energy, macs, mean, low, split in rows:
        print(f"  {energy:4.2f} | {macs / 1e6:8.1f} | {macs / rows[0][1]:6.1%} | {mean:.4f} | "
              f"{low:.4f} | {split}")
    assert rows[0][3] > 0.9999
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert rows[1][3] > 0.99
