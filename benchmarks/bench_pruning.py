"""Structured pruning: MACs and measured latency of ResNet-18 and MobileNetV2 (random weights,
built here in torch) at 30/50/70% channel pruning, relative to the unpruned model.

Every variant is compiled by ``tc.compile`` for the host in the same run with the same schedules
(whatever ``schedules/`` provides at the time); latencies are medians over interleaved rounds,
so load from other processes hits all variants alike. Run:
``python benchmarks/bench_pruning.py [--size 224] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import tvmcompress as tc
from tvmcompress import zoo_vision
from tvmcompress.passes.prune_structured import PruneConfig
from tvmcompress.report import op_stats


def _time_ms(compiled, inputs, runs) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        compiled.run(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name, size, ratios, rounds, runs):
    net = zoo_vision.build_torch(name)
    x = torch.randn(1, 3, size, size)
    model = tc.load(net, example_inputs=[x])
    inputs = {model.inputs[0].name: x.numpy()}
    variants = {}
    for ratio in ratios:
        cfg = tc.CompressConfig(passes=[PruneConfig(ratio=ratio)] if ratio else [])
        compiled = tc.compile(model, config=cfg)
        compiled.run(inputs)  # warm up
        macs = sum(s.macs for s in op_stats(compiled.ir).values())
        params = sum(s.params for s in op_stats(compiled.ir).values())
        variants[ratio] = (compiled, macs, params, [])
    for _ in range(rounds):  # interleaved: every variant once per round
        for ratio, (compiled, _, _, times) in variants.items():
            times.append(_time_ms(compiled, inputs, runs))
    base_macs, base_ms = variants[0.0][1], statistics.median(variants[0.0][3])
    for ratio, (compiled, macs, params, times) in variants.items():
        ms = statistics.median(times)
        print(f"{name:<13}{ratio:>6.0%}{params / 1e6:>9.2f}{macs / 1e6:>10.1f}"
              f"{macs / base_macs:>9.3f}{ms:>11.2f}{ms / base_ms:>9.3f}"
              f"{base_ms / ms:>9.2f}{base_macs / macs:>9.2f}"
              f"{(macs / base_macs) / (ms / base_ms):>8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    args = parser.parse_args()
    print(f"input 1x3x{args.size}x{args.size}, {args.rounds} interleaved rounds x {args.runs} "
          "runs, medians; schedules: whatever tc.compile(target='host') gives today")
    print(f"{'model':<13}{'pruned':>6}{'Mparams':>9}{'MMACs':>10}{'MACs':>9}{'ms':>11}"
          f"{'latency':>9}{'speedup':>9}{'MACs/':>9}{'effic':>8}")
    for name in args.models.split(","):
        bench(name, args.size, (0.0, 0.3, 0.5, 0.7), args.rounds, args.runs)
    print("MACs, latency: relative to unpruned; MACs/: MAC reduction (x); effic: speed-up / MAC "
          "reduction (1.0: latency falls as fast as MACs; goal >= 0.8)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
