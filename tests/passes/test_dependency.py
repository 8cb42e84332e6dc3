"""Dependency analysis: which channels are coupled (residual, depthwise, concat, flatten, heads)
and which groups are unsafe (outputs, grouped convs, unmodeled ops), with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _prune_nets import Concatish, DigitsCNN
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.passes import _prune_importance as imp
from tvmcompress.passes.dependency import analyze, canonicalize


def _coupling(model: tc.Model):
    return analyze(canonicalize(relax.transform.FoldConstant()(model.mod)))


@pytest.fixture(scope="module")
def zoo_cnn():
    return _coupling(tc.load(zoo.build("cnn"), input_shapes={"x": (1, 3, 32, 32)}))


def _torch(module, shape):
    torch.manual_seed(0)
    return _coupling(tc.load(module.eval(), example_inputs=[torch.randn(*shape)]))


def _member(coupling, layer, arg=1, axis=None):
    call = coupling.layers[layer]
    return next(m for m in coupling.members if m.call.same_as(call) and m.arg == arg
                and (axis is None or m.axis == axis))


def test_zoo_cnn_groups_and_reasons(zoo_cnn):
    groups = {g.name: g for g in zoo_cnn.groups}
    # The stem is added (residual) to the grouped 1x1 conv: coupled, and unsafe because of it.
    assert groups["conv2d0"].layers == ["conv2d0", "conv2d2"]
    assert groups["conv2d0"].reason == "grouped conv2d (groups=4)"
    assert [groups[n].prunable for n in ("conv2d3", "conv2d4", "conv2d5")] == [True] * 3
    assert groups["matmul0"].reason == "reaches a model output"


def test_concat_gives_each_input_its_channel_offset(zoo_cnn):
    head_in = _member(zoo_cnn, "conv2d5", axis=1)  # consumes avgpool(concat(conv3, conv4))
    line = head_in.labels[0, :, 0, 0]
    units = {g.name: set(g.units.tolist()) for g in zoo_cnn.groups}
    assert set(line[:16].tolist()) == units["conv2d3"]
    assert set(line[16:].tolist()) == units["conv2d4"]


def test_flatten_maps_a_channel_to_its_spatial_features():
    coupling = _torch(DigitsCNN(), (1, 1, 8, 8))
    fc_in = _member(coupling, "matmul0", axis=0).labels[:, 0]
    conv_units = coupling.group("conv2d2").channels["conv2d2"]
    np.testing.assert_array_equal(fc_in, np.repeat(conv_units, 16))


def test_dense_concat_couples_nothing_but_slices_both():
    coupling = _torch(Concatish(), (1, 3, 16, 16))
    assert all(g.prunable for g in coupling.groups[:-1])
    dense_in = _member(coupling, "conv2d3", axis=1).labels[0, :, 0, 0]
    a, b = (coupling.group(n).channels[n] for n in ("conv2d1", "conv2d2"))
    np.testing.assert_array_equal(dense_in, np.concatenate([a, b]))


def test_transformer_heads_ffn_and_residual_stream():
    coupling = _coupling(tc.load(zoo.build("transformer"), input_shapes={"x": (1, 16, 64)}))
    qkv, proj, ffn = (coupling.group(n) for n in ("matmul0", "matmul3", "matmul4"))
    assert (len(qkv.units), qkv.width, qkv.prunable) == (4, 48, True)   # 4 heads of q, k, v
    heads = qkv.channels["matmul0"].reshape(3, 4, 16)
    assert all(len(set(heads[:, h].ravel().tolist())) == 1 for h in range(4))
    proj_in = _member(coupling, "matmul3", axis=0).labels[:, 0]
    np.testing.assert_array_equal(proj_in, np.repeat(qkv.units, 16))
    assert "model input" in proj.reason                                  # x + attention(x)
    assert (len(ffn.units), ffn.prunable) == (128, True)


def test_unmodeled_op_marks_its_inputs_unsafe():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LogSoftmax(1),
                              torch.nn.Conv2d(8, 8, 1))
    coupling = _torch(net, (1, 3, 8, 8))
    assert "normalizes over channels" in coupling.group("conv2d0").reason


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 64))
def test_round_keep_stays_in_bounds(total, round_to, keep):
    keep = min(keep, total)
    out = imp.round_keep(keep, total, round_to, 1)
    assert 1 <= out <= total
    assert out % round_to == 0 or out == total or total < round_to


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 20), min_size=1, max_size=5), st.floats(0, 0.99))
def test_global_keep_removes_ratio_within_minimums(sizes, ratio):
    rng = np.random.default_rng(0)
    scores = {f"g{i}": rng.random(n) for i, n in enumerate(sizes)}
    keep = imp.global_keep(scores, ratio, dict.fromkeys(scores, 1))
    removed = sum(sizes) - sum(keep.values())
    assert removed <= round(ratio * sum(sizes)) and all(k >= 1 for k in keep.values())
    if ratio == 0:
        assert removed == 0


def test_magnitude_sums_members():
    w = np.array([[3.0, 0.0], [4.0, 1.0]])
    unit = np.array([0, 1])
    np.testing.assert_allclose(imp.magnitude([(w, 1, unit)], 2, 2), [5.0, 1.0])
    np.testing.assert_allclose(imp.magnitude([(w, 1, unit), (w, 1, unit)], 2, 1), [14.0, 2.0])


def test_nan_guard_where_keeps_channels_prunable():
    """HF attention's ``where(isnan(s), 0, s)`` guard (MiniLM) must not block head pruning."""

    class Guarded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(torch.where(torch.isnan(y), torch.zeros_like(y), y))

    coupling = _torch(Guarded(), (1, 3, 8, 8))
    ops = {m.call.op.name for m in coupling.members}
    assert coupling.group("conv2d0").prunable, coupling.group("conv2d0").reason
    assert "relax.nn.conv2d" in ops
