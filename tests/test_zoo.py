"""Zoo models compiled for host match onnxruntime and torch; exports and reports are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmcompress as tc
from tvmcompress import zoo

MODELS = ["mlp", "cnn", "transformer"]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_zoo_matches_onnxruntime(name, batch, zoo_onnx, compiled_zoo, zoo_inputs,
                                 assert_matches_ort):
    """Lossless compilation: fp32 outputs equal onnxruntime's up to summation order."""
    compiled = compiled_zoo(name, batch)
    assert compiled.signature.inputs == [
        {"name": "x", "shape": [batch, *zoo.ZOO[name][1]], "dtype": "float32"}]
    assert_matches_ort(zoo_onnx(name), compiled, zoo_inputs(name, batch, seed=batch))


def _seeded_cnn() -> torch.nn.Module:
    """The zoo CNN in training mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    module = zoo.cnn()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module.train()


def test_torch_module_matches_torch(fp32_tol):
    """A torch.nn.Module is traced in eval mode and gives torch's own eval outputs."""
    module = _seeded_cnn()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = tc.load(module, example_inputs=(x,))
    assert module.training, "load() must restore the module's training mode"
    assert [s.name for s in model.inputs] == ["x"]  # named after forward's parameter
    (out,) = tc.compile(model).run([x.numpy()]).values()
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    np.testing.assert_allclose(out, expected, **fp32_tol)


def test_torch_module_without_examples_is_an_input_error():
    """Tracing needs shapes; the message says what to pass."""
    with pytest.raises(tc.InputError, match="example_inputs"):
        tc.load(zoo.mlp())


def test_export_is_bit_identical(compiled_zoo, zoo_inputs, tmp_path):
    """The exported library is the same code: outputs equal to the last bit."""
    compiled = compiled_zoo("transformer", 8)
    inputs = zoo_inputs("transformer", 8, seed=3)
    module = tc.runtime.load(compiled.export(tmp_path / "transformer"))
    assert module.signature == compiled.signature
    expected, actual = compiled.run(inputs), module.run(inputs)
    assert expected.keys() == actual.keys() == {"y"}
    np.testing.assert_array_equal(actual["y"], expected["y"])


def _total(stats, attr: str) -> int:
    return sum(getattr(s, attr) for s in stats.values())


def test_report_counts_mlp(compiled_zoo, fp32_tol):
    """MACs are the hand count, params the torch parameter count, fidelity ~exact."""
    batch = 8
    rep = compiled_zoo("mlp", batch).report(measure=True, repeat=3)
    macs = batch * (64 * 128 + 128 * 128 + 128 * 10)
    torch_params = sum(p.numel() for p in zoo.mlp().parameters())
    for side in (rep.original, rep.compiled):  # no compression configured: both the same
        assert _total(side, "macs") == macs
        assert side["matmul"].macs == macs
        assert _total(side, "params") == torch_params
        assert _total(side, "weight_bytes") == 4 * torch_params
    (fid,) = rep.fidelity.values()
    assert fid["cosine"] > 1 - 1e-9
    assert fid["max_abs_err"] < fp32_tol["atol"]
    assert set(rep.latency_ms) == {"original (onnxruntime fp32)", "compiled (host)"}
    assert all(ms > 0 for ms in rep.latency_ms.values())


def test_benchmark_statistics(compiled_zoo):
    """benchmark() times exactly ``repeat`` runs and its statistics are ordered."""
    result = compiled_zoo("mlp", 1).benchmark(repeat=7, warmup=1)
    assert result.repeats == 7
    assert 0 < result.min_ms <= result.median_ms <= result.max_ms
    assert result.min_ms <= result.mean_ms <= result.max_ms
