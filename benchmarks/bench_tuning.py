"""Tuned vs untuned tvmcompress vs onnxruntime fp32, side by side in one process.

Per model: tune with ``tc.Tune(seconds=--seconds)`` into a fresh database (``--db`` to
reuse one), then time ORT (2 intra-op threads), the default rules (no database) and the
tuned build, interleaved for ``--rounds`` rounds (start rotated); per round each engine
does a warmup run and up to ``--repeat`` timed runs within ``--budget`` seconds. Reported:
median of per-round medians and ratios to ORT (goal from issue 3: tuned <= 0.9x ORT).

    python benchmarks/bench_tuning.py [--models gemm128,resnet18,mobilenet_v2,minilm]
        [--seconds 600]
    python benchmarks/bench_tuning.py --ship schedules/db --seconds 60   # rebuild shipped DB
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["TVM_NUM_THREADS"] = "2"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A private per-user cache: what other runs tuned on this machine must not leak in.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-tuning-cache-")

import numpy as np
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress import reference, runtime, zoo, zoo_vision
from tvmcompress.api import CompiledModel
from tvmcompress.schedules import build

MODELS = ("gemm128", "resnet18", "mobilenet_v2", "minilm")


def load(name: str, batch: int = 1) -> tc.Model:
    if name == "gemm128":
        w = np.random.default_rng(0).standard_normal((768, 3072)).astype("float32")
        graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [oh.make_tensor_value_info("x", TensorProto.FLOAT, [128, 768])],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, [128, 3072])],
                              [numpy_helper.from_array(w, "w")])
        return tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    if name == "minilm":
        return tc.load(zoo.minilm(), input_shapes={n: [batch, 128] for n in (
            "input_ids", "attention_mask", "token_type_ids")})
    if name in zoo.ZOO:
        return tc.load(zoo.build(name, batch), input_shapes={"x": (batch, *zoo.ZOO[name][1])})
    return tc.load(zoo_vision.build(name))


def untuned(model: tc.Model, target: str) -> CompiledModel:
    """The default rules only: no database at all (not even the shipped one)."""
    preset = tc.resolve_target(target)
    executable, info = build(model.mod, preset)
    return CompiledModel(model, preset, tc.CompressConfig(), model.mod, executable, info)


def timed(fn, budget: float, repeat: int) -> float:
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat and (not times or time.perf_counter() - start < budget):
        times.append(runtime.time_ms(fn, 1, warmup=0)[0])
    return statistics.median(times)


def bench(name: str, args: argparse.Namespace) -> dict:
    model = load(name)
    db = args.db or tempfile.mkdtemp(prefix=f"bench-tuning-{name}-")
    start = time.perf_counter()
    tuned = tc.compile(model, "host", tune=tc.Tune(seconds=args.seconds, database=db))
    compile_s = time.perf_counter() - start - tuned.build_info.tuning.seconds
    plain = untuned(model, "host")
    inputs = runtime.random_inputs(model.signature)
    session = reference.ort_session(model.onnx_model, threads=2)
    expected = session.run(None, inputs)[0]
    got = next(iter(tuned.run(inputs).values()))
    engines = {"ort": lambda: session.run(None, inputs), "untuned": lambda: plain.run(inputs),
               "tuned": lambda: tuned.run(inputs)}
    rows = {k: [] for k in engines}
    for r in range(args.rounds):
        order = list(engines)[r % 3:] + list(engines)[:r % 3]
        for key in order:
            rows[key].append(timed(engines[key], args.budget, args.repeat))
    ms = {k: statistics.median(v) for k, v in rows.items()}
    info = tuned.build_info
    return {"name": name, **ms, "tune_s": info.tuning.seconds, "compile_s": compile_s,
            "trials": info.tuning.trials, "from_db": len(info.from_database),
            "kernels": info.kernels, "max_err": float(np.abs(expected - got).max())}


def ship(out: Path, seconds: float) -> None:
    """Tune the test zoo for x86-64-avx2, keep each kernel's best record when it beats the
    default rules by 5 %, and write those to ``out`` (replacing what was there)."""
    from tvmcompress.schedules import ship as shipping

    work = Path(tempfile.mkdtemp(prefix="ship-db-"))
    for name in ("mlp", "cnn", "transformer"):
        for batch in (1, 8):
            result = tc.compile(load(name, batch), "x86-64-avx2",
                                tune=tc.Tune(seconds=seconds, database=work, progress=False))
            print(f"{name} b{batch}: {len(result.build_info.from_database)} kernels from db")
    kept = shipping.prune(work, out, tc.resolve_target("x86-64-avx2").tvm_target)
    print(f"shipped {kept} records to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=600.0, help="tuning budget per model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--db", help="tuning database to use (default: a fresh one per model)")
    parser.add_argument("--ship", type=Path, help="rebuild the shipped database into this dir")
    args = parser.parse_args()
    if args.ship:
        ship(args.ship, args.seconds)
        return
    print(f"{'model':<14}{'ORT ms':>9}{'untuned ms':>12}{'tuned ms':>10}{'untuned/ORT':>13}"
          f"{'tuned/ORT':>11}{'tune s':>8}{'trials':>8}{'+build s':>9}"
          f"{'from db':>9}{'max err':>10}")
    for name in args.models.split(","):
        r = bench(name, args)
        print(f"{r['name']:<14}{r['ort']:>9.2f}{r['untuned']:>12.2f}{r['tuned']:>10.2f}"
              f"{r['untuned'] / r['ort']:>13.2f}{r['tuned'] / r['ort']:>11.2f}"
              f"{r['tune_s']:>8.0f}{r['trials']:>8}{r['compile_s']:>9.0f}"
              f"{r['from_db']:>5}/{r['kernels']:<3}{r['max_err']:>10.1e}",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine: ratios are the signal)")


if __name__ == "__main__":
    main()
