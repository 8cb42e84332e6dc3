"""Accuracy, weight bytes, fidelity and latency of every Quantize scheme on a digits CNN.

The CNN (conv 1->16, conv 16->32, maxpool, linear 512->64, linear 64->10) is trained here on
scikit-learn's digits (inputs centred, so activations are signed) for 10 epochs; 360 held-out
images, batch 120. Every variant is compiled with ``tc.compile(model, "host")`` (default
schedules, untuned: latency shows the graph, not tuned kernels, which the low-bit-kernels issue
adds) and timed by ``CompiledModel.benchmark``, interleaved over ``--rounds`` rounds (median of
per-round medians). Fidelity is ``quantization_fidelity`` against the float build.

    python benchmarks/bench_quantize.py [--rounds 3] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np
import torch

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.passes.calibrate import quantization_fidelity
from tvmcompress.passes.quantize import QuantizeConfig

BATCH = 120


def _train():
    net, x, labels, train, test = zoo.digits_cnn()
    test = test[:3 * BATCH]
    return net, x[train[:240]], x[test], labels[test]


def _variants(calib):
    yield "fp32", None
    for method in ("minmax", "percentile", "entropy", "mse"):
        yield f"int8 {method}", QuantizeConfig(scheme="int8", calibration=calib, method=method)
    yield "int8 minmax +bias corr", QuantizeConfig(scheme="int8", calibration=calib,
                                                   bias_correction=True)
    yield "int8-dynamic", QuantizeConfig(scheme="int8-dynamic")
    yield "int4 g32 asym", QuantizeConfig(scheme="int4")
    yield "int4 g32 sym", QuantizeConfig(scheme="int4", symmetric=True)
    yield "int4, conv0+fc1 int8-dyn", QuantizeConfig(
        scheme="int4", per_layer={"conv2d0": "int8-dynamic", "matmul1": "int8-dynamic"})
    for scheme in ("fp16", "bf16", "pow2", "ternary", "binary"):
        yield scheme, QuantizeConfig(scheme=scheme)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    net, calib_x, test_x, labels = _train()
    model = tc.load(net, example_inputs=(torch.from_numpy(test_x[:BATCH]),))
    name = model.inputs[0].name
    built = {label: tc.compile(model, config=tc.CompressConfig([cfg] if cfg else []))
             for label, cfg in _variants({name: calib_x})}
    times = {label: [] for label in built}
    for _ in range(args.rounds):
        for label, cm in built.items():
            times[label].append(cm.benchmark([test_x[:BATCH]], repeat=args.repeat).median_ms)
    print(f"{'variant':<26}{'test acc %':>11}{'weight KB':>11}{'cosine':>9}{'top-1 agr':>10}"
          f"{'ms/batch':>10}")
    for label, cm in built.items():
        preds = np.concatenate([next(iter(cm.run([test_x[i:i + BATCH]]).values())).argmax(1)
                                for i in range(0, len(test_x), BATCH)])
        rows = [r for r in cm.pass_log if r["pass"] == "Quantize" and "bytes_after" in r]
        kb = (sum(r["bytes_after"] for r in rows) if rows else
              sum(p.numel() * 4 for n, p in net.named_parameters() if "weight" in n)) / 1024
        fid = quantization_fidelity(built["fp32"], cm, {name: test_x})
        (f,) = fid.values()
        print(f"{label:<26}{100 * np.mean(preds == labels):>11.2f}{kb:>11.1f}"
              f"{f['cosine']:>9.5f}{f['top1_agreement']:>10.4f}"
              f"{statistics.median(times[label]):>10.3f}")


if __name__ == "__main__":
    main()
