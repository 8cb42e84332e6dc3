"""The real all-MiniLM-L6-v2, exported by torch, compiles for host and matches onnxruntime.

Slow (export and compile take ~30 s): run with ``python -m pytest -q -m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

import tvmcompress as tc
from tvmcompress import reference, zoo

pytestmark = pytest.mark.slow

NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Measured here: max abs error 5e-6 on hidden states up to ~6 (fp32 summation order only).
MAX_ABS_ERR = 5e-5
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def minilm():
    """Exported once with dynamic batch and sequence; each test fixes them."""
    return zoo.minilm()


@pytest.fixture(scope="module")
def compiled(minilm):
    """Compiled once per (batch, seq)."""
    cache = {}

    def get(batch: int, seq: int) -> tc.CompiledModel:
        if (batch, seq) not in cache:
            shapes = {n: [batch, seq] for n in NAMES}
            cache[batch, seq] = tc.compile(minilm, target="host", input_shapes=shapes)
        return cache[batch, seq]

    return get


def _tokens(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random vocabulary ids, full attention, segment 0."""
    ids = np.random.default_rng(seed).integers(0, 30000, (batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


def _assert_matches(minilm, compiled_model, inputs):
    expected = reference.ort_run(minilm, inputs)["last_hidden_state"]
    actual = compiled_model.run(inputs)["last_hidden_state"]
    assert actual.shape == expected.shape
    fid = reference.fidelity(expected, actual)
    assert fid["max_abs_err"] < MAX_ABS_ERR, fid
    assert fid["cosine"] > MIN_COSINE, fid


@pytest.mark.parametrize("batch, seq", [(1, 128), (2, 32)])
def test_minilm_matches_onnxruntime(batch, seq, minilm, compiled):
    """Dynamic batch and sequence fixed by input_shapes; int64 token inputs."""
    compiled_model = compiled(batch, seq)
    assert compiled_model.signature.inputs == [
        {"name": n, "shape": [batch, seq], "dtype": "int64"} for n in NAMES]
    assert compiled_model.signature.outputs == [
        {"name": "last_hidden_state", "shape": [batch, seq, 384], "dtype": "float32"}]
    _assert_matches(minilm, compiled_model, _tokens(batch, seq))


def test_minilm_padding_mask(minilm, compiled):
    """A padded second sentence: masked positions take the same path as onnxruntime's."""
    inputs = _tokens(2, 32, seed=1)
    inputs["attention_mask"][1, 20:] = 0
    _assert_matches(minilm, compiled(2, 32), inputs)
