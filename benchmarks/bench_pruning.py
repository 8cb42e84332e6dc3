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
from torch import nn

import tvmcompress as tc
from tvmcompress.passes.prune_structured import PruneConfig
from tvmcompress.report import op_stats


def _cbr(cin, cout, k, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Basic(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.a, self.b = _cbr(cin, cout, 3, s), _cbr(cout, cout, 3, act=None)
        self.down = _cbr(cin, cout, 1, s, act=None) if s != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + (self.down(x) if self.down else x))


def resnet18():
    layers, cin = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for cout, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, s), Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


class Inverted(nn.Module):
    def __init__(self, cin, cout, s, t):
        super().__init__()
        mid = cin * t
        self.body = nn.Sequential(*([_cbr(cin, mid, 1, act=nn.ReLU6)] if t != 1 else []),
                                  _cbr(mid, mid, 3, s, groups=mid, act=nn.ReLU6),
                                  _cbr(mid, cout, 1, act=None))
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2():
    layers, cin = [_cbr(3, 32, 3, 2, act=nn.ReLU6)], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*layers, _cbr(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(1280, 1000))


def _randomize_bn(net):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 1.0)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    return net.eval()


def _time_ms(compiled, inputs, runs) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        compiled.run(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name, factory, size, ratios, rounds, runs):
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    model = tc.load(_randomize_bn(factory()), example_inputs=[x])
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
    factories = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}
    for name in args.models.split(","):
        bench(name, factories[name], args.size, (0.0, 0.3, 0.5, 0.7), args.rounds, args.runs)
    print("MACs, latency: relative to unpruned; MACs/: MAC reduction (x); effic: speed-up / MAC "
          "reduction (1.0: latency falls as fast as MACs; goal >= 0.8)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
