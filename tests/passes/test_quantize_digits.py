"""Quantize on a real task: a CNN trained here on scikit-learn's digits (~3 s), int8 static
with each calibration method (<= 1 point of test accuracy lost), int4 weight-only (<= 2),
mixed precision, and the fidelity rows against the float model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.passes.calibrate import quantization_fidelity
from tvmcompress.passes.quantize import QuantizeConfig

BATCH = 120


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(
        e, relax.Call) and getattr(e.op, "name", "") == op else None)
    return found


@pytest.fixture(scope="module")
def digits():
    """A CNN trained on digits (inputs centred, so activations are signed); test accuracy."""
    net, x, labels, train, test = zoo.digits_cnn()
    test = test[:3 * BATCH]
    model = tc.load(net, example_inputs=(torch.from_numpy(x[:BATCH]),))
    name = model.inputs[0].name
    return {"model": model, "float": tc.compile(model), "calib": {name: x[train[:240]]},
            "test": {name: x[test]}, "labels": labels[test]}


def _accuracy(compiled, digits) -> float:
    (x,) = digits["test"].values()
    preds = [next(iter(compiled.run([x[i:i + BATCH]]).values())).argmax(1)
             for i in range(0, len(x), BATCH)]
    return 100.0 * float(np.mean(np.concatenate(preds) == digits["labels"]))


def _compile(digits, **kwargs) -> tc.CompiledModel:
    return tc.compile(digits["model"], config=tc.CompressConfig([QuantizeConfig(**kwargs)]))


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_digits_int8_static(digits, method):
    """Each calibration method: accuracy drops at most 1 point; matmul/conv are integer."""
    base = _accuracy(digits["float"], digits)
    quant = _compile(digits, scheme="int8", calibration=digits["calib"], method=method,
                     bias_correction=method == "minmax")
    acc = _accuracy(quant, digits)
    print(f"digits int8 {method}: float {base:.2f}% -> {acc:.2f}%")
    assert base >= 95.0 and acc >= base - 1.0
    contractions = _calls(quant.ir, "relax.matmul") + _calls(quant.ir, "relax.nn.conv2d")
    assert len(contractions) == 4
    integer = [c for c in contractions if str(c.attrs.out_dtype) == "int32"]
    assert len(integer) == 3  # conv0 (1 input channel, 9 MACs per output) stays float
    for call in integer:
        assert str(call.args[0].ty.dtype) == "uint8" and str(call.args[1].ty.dtype) == "int8"
    rows = {r["layer"]: r for r in quant.pass_log if r["pass"] == "Quantize"}
    assert rows["conv2d0"]["scheme"] == "fp32" and "reduction of 9" in rows["conv2d0"]["note"]


def test_digits_int4_weight_only(digits):
    """int4 g=32 on every conv/linear: at most 2 points; packed weights (uint8 for convs, uint32
    words of 8 nibbles for the matmuls' CPU kernel), dequant-in-kernel."""
    base = _accuracy(digits["float"], digits)
    quant = _compile(digits, scheme="int4", group_size=32)
    acc = _accuracy(quant, digits)
    print(f"digits int4 g32: float {base:.2f}% -> {acc:.2f}%")
    assert acc >= base - 2.0
    assert not _calls(quant.ir, "relax.matmul") and not _calls(quant.ir, "relax.nn.conv2d")
    tir_calls = _calls(quant.ir, "relax.call_tir")
    assert len(tir_calls) == 4
    for call in tir_calls:
        _, packed, scale, offset = call.args[1].fields  # asymmetric by default
        assert str(packed.ty.dtype) in ("uint8", "uint32")
        assert [str(a.ty.dtype) for a in (scale, offset)] == ["float32"] * 2
    text = quant.ir.script()
    assert '"schedule_rule": "tvmcompress.dequant_matmul"' in text
    assert '"schedule_rule": "tvmcompress.dequant"' in text


def test_digits_mixed_precision_and_report(digits):
    """First conv and classifier int8-dynamic, the rest int4: rows say so; fidelity hook."""
    quant = _compile(digits, scheme="int4", per_layer={"conv2d0": "int8-dynamic",
                                                        "matmul1": "fp32"})
    rows = {r["layer"]: r for r in quant.pass_log if r["pass"] == "Quantize"}
    assert [rows[k]["scheme"] for k in ("conv2d0", "conv2d1", "matmul0", "matmul1")] == \
        ["int8-dynamic", "int4", "int4", "fp32"]
    assert rows["matmul0"]["bytes_after"] == 512 * 64 // 2 + 2 * (512 // 32 * 64 * 4)
    assert len(_calls(quant.ir, "relax.matmul")) == 1  # the classifier, float
    fid = quantization_fidelity(digits["float"], quant, digits["test"])
    (row,) = fid.values()
    assert row["top1_agreement"] >= 0.98 and row["cosine"] > 0.99, row
    assert "pass Quantize:" in str(quant.report(measure=False))
