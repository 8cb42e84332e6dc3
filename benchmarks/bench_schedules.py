"""Default CPU schedules vs plain TVM vs onnxruntime, side by side in one process.

Per case: ORT = onnxruntime fp32, 2 intra-op threads; plain = ``tvm.compile(mod, target)`` on
the same imported Relax module (TVM's own default pipeline, no tuning); tvmc =
``tc.compile(model, "host")`` with our default rules. Engines are interleaved for ``--rounds``
rounds (start rotated); per round each engine does a warmup run then as many timed runs as fit
in ``--budget`` seconds (at least one, at most ``--repeat``). Reported: median over rounds of
per-round medians, ratios to ORT, GFLOP/s for the GEMMs against this CPU's fp32 peak, and the
load average (the machine is shared: absolute numbers are noisy, the ratios less so).

    [BENCH_THREADS=2] python benchmarks/bench_schedules.py [--cases gemm1,...,resnet18]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# Threads per engine (ORT intra-op, TVM's pool); set BENCH_THREADS=1 to compare kernels
# without thread-pool waits, which a loaded machine inflates.
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
os.environ["TVM_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx import helper as oh  # noqa: E402

import tvmcompress as tc  # noqa: E402
from tvmcompress import reference, runtime, zoo, zoo_vision  # noqa: E402

CASES = ("gemm1", "gemm128", "cnn", "transformer", "minilm", "minilm8", "resnet18",
         "mobilenet_v2")


def gemm(m: int, k: int = 768, n: int = 3072) -> tuple[onnx.ModelProto, float]:
    """ONNX MatMul with a constant weight; returns the model and its FLOPs."""
    w = np.random.default_rng(0).standard_normal((k, n)).astype("float32")
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), 2.0 * m * k * n


def load_case(name: str) -> tuple[tc.Model, float | None]:
    if name.startswith("gemm"):
        model, flops = gemm(int(name[4:]))
        return tc.load(model), flops
    if name.startswith("minilm"):
        batch = int(name[6:] or 1)
        return tc.load(zoo.minilm(), input_shapes={n: [batch, 128] for n in (
            "input_ids", "attention_mask", "token_type_ids")}), None
    if name in zoo_vision.NETS:
        return tc.load(zoo_vision.build(name)), None
    return tc.load(zoo.build(name), input_shapes={"x": [8, *zoo.ZOO[name][1]]}), None


def engines(model: tc.Model, plain: bool) -> tuple[dict, dict]:
    """name -> zero-argument run function; and compile seconds per TVM engine."""
    inputs = runtime.random_inputs(model.signature)
    session = reference.ort_session(model.onnx_model, threads=THREADS)
    runs = {"ORT": lambda: session.run(None, inputs)}
    seconds = {}
    start = time.perf_counter()
    compiled = tc.compile(model)
    seconds["tvmc"] = time.perf_counter() - start
    tensors = compiled.runner.prepare(inputs)
    tvmc_main = compiled.runner._vm["main"]
    runs["tvmc"] = lambda: tvmc_main(*tensors)
    if plain:
        start = time.perf_counter()
        target = compiled.preset.tvm_target
        with target:
            vm = tvm.relax.VirtualMachine(tvm.compile(model.mod, target), tvm.cpu())
        seconds["plain"] = time.perf_counter() - start
        runs["plain"] = lambda: vm["main"](*tensors)
    return runs, seconds


WARMUP_S = 0.05


def timed(run, budget: float, repeat: int) -> list[float]:
    """``run``'s times in ms: ``repeat`` runs (fewer past ``budget`` seconds, at least one)
    after a warm-up of ``WARMUP_S`` (at least 3 runs): the engine run before it leaves its
    worker threads spinning for a while (onnxruntime's and TVM's pools both spin before they
    sleep), and on 2 cores those steal a core from the next engine."""
    runtime.warm_up(run, 3, WARMUP_S)
    times, end = [], time.perf_counter() + budget
    while not times or (len(times) < repeat and time.perf_counter() < end):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_rounds(runs: dict, rounds: int, budget: float, repeat: int) -> dict[str, float]:
    """Median over interleaved rounds of each engine's per-round median (``timed``), in ms."""
    names, per_round = list(runs), {n: [] for n in runs}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_round[name].append(statistics.median(timed(runs[name], budget, repeat)))
    return {n: statistics.median(v) for n, v in per_round.items()}


def peak_gflops() -> tuple[float, float, int]:
    """(GHz, threads x fp32 FLOP/cycle x GHz, FLOP/cycle): 2 FMA pipes of 8 lanes (AVX2)
    or 16 (AVX-512; a Zen 4 runs those at half rate, so its % peak reads low), from
    /proc/cpuinfo's clock and the host's LLVM features."""
    from tvm.target import codegen

    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    ghz = max(mhz) / 1e3 if mhz else 0.0
    wide = codegen.target_has_features("avx512f", tc.resolve_target("host").tvm_target)
    per_cycle = 64 if wide else 32
    return ghz, THREADS * per_cycle * ghz, per_cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="gemm1,gemm128,cnn,transformer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per engine per round")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--no-plain", action="store_true", help="skip plain TVM (slow)")
    args = parser.parse_args()
    ghz, peak, per_cycle = peak_gflops()
    print(f"load average before: {os.getloadavg()}  (shared machine, {THREADS} threads)")
    print(f"peak fp32: {peak:.0f} GFLOP/s ({THREADS} cores x {per_cycle} FLOP/cycle x "
          f"{ghz:.2f} GHz, the clock /proc/cpuinfo reports; a VM hides boost clocks, so % peak "
          "can exceed 100)")
    print(f"cases: {args.cases}; {args.rounds} interleaved rounds, medians")
    header = (f"{'case':<12}{'ORT ms':>9}{'plain ms':>11}{'x ORT':>8}{'tvmc ms':>10}{'x ORT':>7}"
              f"{'compile s':>11}{'ORT GF/s':>10}{'tvmc GF/s':>11}{'% peak':>8}")
    rows = []
    for name in args.cases.split(","):
        model, flops = load_case(name)
        runs, seconds = engines(model, plain=not args.no_plain)
        ms = time_rounds(runs, args.rounds, args.budget, args.repeat)
        plain = ms.get("plain", float("nan"))
        gf = (lambda t: flops / t / 1e6) if flops else (lambda t: float("nan"))
        rows.append(f"{name:<12}{ms['ORT']:>9.3f}{plain:>11.2f}{plain / ms['ORT']:>8.1f}"
                    f"{ms['tvmc']:>10.3f}{ms['tvmc'] / ms['ORT']:>7.2f}{seconds['tvmc']:>11.1f}"
                    f"{gf(ms['ORT']):>10.1f}{gf(ms['tvmc']):>11.1f}"
                    f"{100 * gf(ms['tvmc']) / peak:>8.1f}")
        print(rows[-1], flush=True)
    print(f"\n{header}\n" + "\n".join(rows))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
