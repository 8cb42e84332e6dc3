"""A schedule rule that raises must not fail the compile (schedules/guard.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import dlight as dl

import tvmcompress as tc
from tvmcompress import reference
from tvmcompress.schedules.guard import Guarded


@pytest.fixture(scope="module")
def depthwise_on_1x1():
    """A padded depthwise 3x3 conv on a 1x1 feature map (MobileNetV2's last blocks at 32x32)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
                              torch.nn.ReLU6()).eval()
    return tc.load(net, example_inputs=(torch.randn(1, 16, 1, 1),))


def test_dlight_gemv_raises_and_guarded_declines(depthwise_on_1x1):
    target = tc.resolve_target("host").tvm_target
    with target:
        fused = tvm.transform.Sequential(cpu_pipeline.legalize_passes(target))(depthwise_on_1x1.mod)
    kernels = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    failing = []
    for func in kernels:
        try:
            dl.cpu.GEMV().apply(func, target, False)
        except AssertionError:
            failing.append(func)
    assert failing, "dlight's GEMV no longer raises here; the compile test below still guards"
    assert all(Guarded(dl.cpu.GEMV()).apply(f, target, False) is None for f in failing)


def test_compiles_and_matches_onnxruntime(depthwise_on_1x1):
    compiled = tc.compile(depthwise_on_1x1, "host")
    x = np.random.default_rng(0).standard_normal((1, 16, 1, 1)).astype("float32")
    name = compiled.signature.input_names[0]
    expected = reference.ort_run(depthwise_on_1x1.onnx_model, {name: x})["output"]
    np.testing.assert_allclose(compiled.run({name: x})["output"], expected, rtol=1e-5,
                               atol=1e-6)
