"""Structured pruning: MACs and measured latency of ResNet-18 and MobileNetV2 (random weights,
built here in torch) at 30/50/70% channel pruning, relative to the unpruned model.

Every variant is compiled by ``tc.compile`` for the host in the same run with the same schedules
(whatever ``schedules/`` provides at the time); latencies are taken over interleaved rounds, so
load from other processes hits all variants alike. Both the median and the best (minimum) run
are printed: on a shared machine contention only adds time, and it hurts small pruned models'
many short parallel kernels most, so the minimum is the better estimate of the kernels'
own speed (efficiency is given for both). ``TVM_NUM_THREADS=1`` measures single-threaded. Run:
``python benchmarks/bench_pruning.py [--size 224] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import tvmcompress as tc
from tvmcompress import runtime, zoo_vision
from tvmcompress.passes.prune_structured import PruneConfig
from tvmcompress.report import op_stats

WARMUP_S = 0.1  # per variant and round, before its timed runs


def _time_ms(compiled, tensors, runs) -> list[float]:
    """The module's ``main`` on inputs already on the device (as ``Runner.benchmark`` times
    it): the numpy conversions of ``compiled.run`` would add the same fixed cost to every
    variant and understate what pruning buys."""
    main, times = compiled.runner._vm["main"], []
    runtime.warm_up(lambda: main(*tensors), 0, WARMUP_S)  # other variants' weights left caches
    for _ in range(runs):
        t0 = time.perf_counter()
        main(*tensors)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench(name, size, ratios, rounds, runs):
    net = zoo_vision.build_torch(name)
    x = torch.randn(1, 3, size, size)
    model = tc.load(net, example_inputs=[x])
    inputs = {model.inputs[0].name: x.numpy()}
    variants = {}
    for ratio in ratios:
        cfg = tc.CompressConfig(passes=[PruneConfig(ratio=ratio)] if ratio else [])
        compiled = tc.compile(model, config=cfg)
        tensors = compiled.runner.prepare(inputs)
        macs = sum(s.macs for s in op_stats(compiled.ir).values())
        params = sum(s.params for s in op_stats(compiled.ir).values())
        variants[ratio] = ((compiled, tensors), macs, params, [])
    for _ in range(rounds):  # interleaved: every variant once per round
        for ratio, ((compiled, tensors), _, _, times) in variants.items():
            times.extend(_time_ms(compiled, tensors, runs))
    base_macs, base = variants[0.0][1], variants[0.0][3]
    base_med, base_min = statistics.median(base), min(base)
    for ratio, (_, macs, params, times) in variants.items():
        med, best = statistics.median(times), min(times)
        print(f"{name:<13}{ratio:>6.0%}{params / 1e6:>9.2f}{macs / 1e6:>10.1f}"
              f"{macs / base_macs:>8.3f}{med:>9.2f}{best:>9.2f}{med / base_med:>8.3f}"
              f"{best / base_min:>8.3f}{base_macs / macs:>8.2f}"
              f"{(macs / base_macs) / (med / base_med):>8.2f}"
              f"{(macs / base_macs) / (best / base_min):>8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    args = parser.parse_args()
    print(f"input 1x3x{args.size}x{args.size}, {args.rounds} interleaved rounds x {args.runs} "
          f"runs; TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', '(all cores)')}; "
          "schedules: whatever tc.compile(target='host') gives today")
    print(f"{'model':<13}{'pruned':>6}{'Mparams':>9}{'MMACs':>10}{'MACs':>8}{'med ms':>9}"
          f"{'min ms':>9}{'lat med':>8}{'lat min':>8}{'MACs/':>8}{'eff med':>8}{'eff min':>8}")
    for name in args.models.split(","):
        bench(name, args.size, (0.0, 0.3, 0.5, 0.7), args.rounds, args.runs)
    print("MACs, lat: relative to unpruned (median / best run); MACs/: MAC reduction (x); eff: "
          "speed-up / MAC reduction (1.0: latency falls as fast as MACs; goal >= 0.8)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
