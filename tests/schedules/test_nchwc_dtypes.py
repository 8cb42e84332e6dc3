"""NCHWc with convs that are not fp32: ConvertLayout moves every conv to NCHWc, so fp16 convs
(the fp16 scheme) get our NCHWc kernel and float64 convs go back to NCHW; both used to fail
in VM codegen ("cannot emit this Relax operator")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tvmcompress as tc
from tvmcompress.reference import ort_run


def _net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU6(),
        nn.Conv2d(16, 32, 3, padding=1, groups=16),  # depthwise, multiplier 2
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(32, 8, 1)).eval().to(dtype)


def test_fp16_scheme_convs_run_in_nchwc():
    x = torch.randn(1, 16, 20, 20)
    model = tc.load(_net(torch.float32), example_inputs=[x])
    compiled = tc.compile(model, "x86-64-avx2", config=tc.CompressConfig(  # 8-lane blocks
        passes=[tc.QuantizeConfig(scheme="fp16")]))
    kernels = compiled.profile(rounds=1).kernels
    assert sum("conv2d_nchwc" in k.name for k in kernels) == 3
    assert not compiled.build_info.unscheduled
    (expected,) = ort_run(model.onnx_model, {model.signature.input_names[0]: x.numpy()}).values()
    (actual,) = compiled.run([x.numpy()]).values()
    np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(1, 16, 20, 20), (2, 16, 9, 13)])
def test_float64_convs_stay_nchw(shape):
    net = _net(torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    compiled = tc.compile(tc.load(net, example_inputs=[x]), "host")
    assert not any("conv2d_nchwc" in k.name for k in compiled.profile(rounds=1).kernels)
    (actual,) = compiled.run([x.numpy()]).values()
    assert actual.dtype == np.float64
    np.testing.assert_allclose(actual, net(x).detach().numpy(), rtol=1e-10, atol=1e-10)
