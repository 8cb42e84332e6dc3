"""Real-world shaped models prune without crashing: MiniLM (heads and FFN neurons behind HF's
NaN-guarded attention), ResNet-18 and MobileNetV2 with the Taylor criterion. Slow (minutes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmcompress as tc
from tvmcompress import zoo, zoo_vision
from tvmcompress.passes.prune_structured import PruneConfig
from tvmcompress.reference import fidelity

pytestmark = pytest.mark.slow


def _prune(model, cfg, feed):
    base = tc.compile(model).run(feed)
    pruned = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    out = pruned.run(feed)
    cosine = min(fidelity(base[k], out[k])["cosine"] for k in base)
    cut = {r["layer"]: (r["before"], r["after"]) for r in pruned.pass_log
           if r.get("note") == "pruned"}
    return cut, cosine, pruned.pass_log


def test_minilm_prunes_heads_and_ffn_neurons():
    names = ("input_ids", "attention_mask", "token_type_ids")
    model = tc.load(zoo.minilm(seq=16), input_shapes=dict.fromkeys(names, (1, 16)))
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 5000, (1, 16)), "attention_mask": np.ones((1, 16)),
            "token_type_ids": np.zeros((1, 16))}
    feed = {k: v.astype("int64") for k, v in feed.items()}
    cut, cosine, _ = _prune(model, PruneConfig(ratio=0.3), feed)
    heads = [v for v in cut.values() if v[0] == 12]
    ffn = [v for v in cut.values() if v[0] == 1536]
    print(f"\nMiniLM 30% L2: heads {heads}, FFN {ffn}, output cosine {cosine:.4f}")
    assert heads and ffn and all(a < b for b, a in heads + ffn)
    assert 0.3 < cosine < 1.0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_vision_models_prune_with_taylor(name):
    torch.manual_seed(0)
    model = tc.load(zoo_vision.build_torch(name).eval(), example_inputs=[torch.randn(1, 3, 64, 64)])
    key = model.inputs[0].name
    calib = {key: np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32")}
    cfg = PruneConfig(ratio=0.3, criterion="taylor", calibration=calib)
    cut, cosine, log = _prune(model, cfg, {key: calib[key][:1]})
    assert not [r for r in log if r["layer"] == "(criterion)"]     # no fallback: gradients ran
    assert len(cut) > 5 and all(a % 8 == 0 and a < b for b, a in cut.values())
    print(f"\n{name} 30% Taylor: {len(cut)} groups pruned, output cosine {cosine:.4f}")
    assert 0.3 < cosine < 1.0
