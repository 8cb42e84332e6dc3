"""Sparse kernels vs our dense kernel: GEMMs 1x768x3072 and 128x768x3072 and MiniLM's FFN
(384 -> 1536 -> 384, GELU, seq 128) at 50-95% sparsity, unstructured (CSR) and block (1 x vector
width), plus the digits CNN at 80% sparsity (accuracy and latency).

Dense = ``tc.compile`` with no passes (our default fp32 CPU schedules); sparse = the same model
through ``SparsifyConfig(decide="sparse")``. All variants of a shape run in the same process,
timed in interleaved rounds (medians), with TVM_NUM_THREADS=2. The break-even sparsity is
interpolated where the sparse time crosses the dense one. Run:
``python benchmarks/bench_sparse.py [--rounds 7] [--skip-digits]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import argparse
import itertools
import statistics

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import tvmcompress as tc
from tvmcompress.passes.sparsify import SparsifyConfig

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def gemm(m: int, k: int, n: int):
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ffn(seq: int = 128, d: int = 384, hidden: int = 1536):
    """MiniLM's FFN: x @ W1 + b1 -> GELU (erf form, as exported) -> @ W2 + b2."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.standard_normal((d, hidden)) * 0.05, "b1": rng.standard_normal(hidden),
             "W2": rng.standard_normal((hidden, d)) * 0.05, "b2": rng.standard_normal(d),
             "r2": np.array(2 ** -0.5), "one": np.array(1.0), "half": np.array(0.5)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Mul", ["hb", "r2"], ["hs"]), helper.make_node("Erf", ["hs"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["hb", "e1"], ["g0"]),
             helper.make_node("Mul", ["g0", "half"], ["g"]),
             helper.make_node("MatMul", ["g", "W2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _threads(n: int) -> None:
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, n)


def interleaved_ms(compiled: dict, inputs: dict, rounds: int) -> dict:
    """Median over rounds of each variant's median of 5 runs; every variant once per round.
    A key ending in "1t" is timed with the thread pool cut to one thread."""
    samples = {key: [] for key in compiled}
    for _ in range(rounds):
        for key, cm in compiled.items():
            _threads(1 if str(key).endswith("1t") else 2)
            samples[key].append(cm.benchmark(inputs, warmup=1, repeat=5).median_ms)
    _threads(2)
    return {key: statistics.median(v) for key, v in samples.items()}


def break_even(dense_ms: float, sparse: dict[float, float]) -> str:
    """Sparsity where the sparse time meets the dense one (linear between measured points)."""
    points = sorted(sparse.items())
    if points[0][1] < dense_ms:
        return f"< {points[0][0]:.2f}"
    for (s0, t0), (s1, t1) in itertools.pairwise(points):
        if t1 < dense_ms <= t0:
            return f"{s0 + (s1 - s0) * (t0 - dense_ms) / (t0 - t1):.2f}"
    return f"> {points[-1][0]:.2f}"


def bench_shape(name: str, model, x_shape, rounds: int) -> None:
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    inputs = {"x": x}
    dense = tc.compile(model)
    print(f"\n{name}  (dense: our default fp32 schedule)")
    print("(max err: vs the dense kernel on the same zeroed fp32 weights; int8 adds rounding)")
    print(f"{'pattern':>16} {'sparsity':>8} {'dense ms':>9} {'dense 1T':>9} {'sparse ms':>9} "
          f"{'speedup':>8} {'vs 1T':>6} {'max err':>8}")
    for pattern, int8 in (("block", False), ("unstructured", False), ("block", True)):
        compiled = {"dense": dense, "dense 1t": dense}
        for s in SPARSITIES:
            cfg = SparsifyConfig(sparsity=s, pattern=pattern, decide="sparse", min_size=0,
                                 int8=int8)
            compiled[s] = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
        times = interleaved_ms(compiled, inputs, rounds)
        label = f"{pattern} {compiled[SPARSITIES[0]].pass_log[0]['block']}" + (
            " int8" if int8 else "")
        for s in SPARSITIES:
            ref = tc.compile(model, config=tc.CompressConfig(passes=[SparsifyConfig(
                sparsity=s, pattern=pattern, decide="dense", min_size=0)]))
            err = float(np.abs(compiled[s].run(inputs)["y"] - ref.run(inputs)["y"]).max())
            print(f"{label:>16} {s:>8.2f} {times['dense']:>9.3f} "
                  f"{times['dense 1t']:>9.3f} {times[s]:>9.3f} {times['dense'] / times[s]:>7.2f}x "
                  f"{times['dense 1t'] / times[s]:>5.2f}x {err:>8.1e}")
        print(f"{'':>16} break-even sparsity ({label}): "
              f"{break_even(times['dense'], {s: times[s] for s in SPARSITIES})}")


def bench_digits(rounds: int) -> None:
    import torch

    from tvmcompress import zoo

    net, x, labels, _, test = zoo.digits_cnn()
    model = tc.load(net, example_inputs=(torch.from_numpy(x[:1]),))
    name = model.inputs[0].name
    print("\ndigits CNN (batch 1), 80% sparsity, no fine-tuning")
    variants = {"dense": tc.compile(model)}
    for pattern in ("block", "unstructured"):
        cfg = SparsifyConfig(sparsity=0.8, pattern=pattern, decide="auto", min_size=0)
        variants[f"{pattern} auto"] = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
        cfg = SparsifyConfig(sparsity=0.8, pattern=pattern, decide="sparse", min_size=0)
        variants[f"{pattern} sparse"] = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    times = interleaved_ms(variants, {name: x[:1]}, rounds)
    for key, cm in variants.items():
        pred = [int(np.argmax(next(iter(cm.run({name: x[i:i + 1]}).values())))) for i in test]
        acc = float(np.mean(np.array(pred) == labels[test]))
        print(f"{key:>20}: accuracy {acc:.3f}  latency {times[key]:.4f} ms "
              f"({times['dense'] / times[key]:.2f}x dense)")
        for row in cm.pass_log:
            print(f"{'':>22}{row['layer']}: {row.get('storage')} sparsity={row.get('sparsity')} "
                  f"break_even={row.get('break_even')} ({row.get('cost', row.get('note'))})")


def bench_minilm(rounds: int, seq: int = 128) -> None:
    """all-MiniLM-L6-v2 at 80% sparsity (no fine-tuning): cosine of the hidden states vs the
    dense model and latency, per pattern, with the pass deciding per layer (auto)."""
    from tvmcompress import reference, zoo

    names = ("input_ids", "attention_mask", "token_type_ids")
    model = tc.load(zoo.minilm(), input_shapes={n: [1, seq] for n in names})
    ids = np.random.default_rng(0).integers(0, 30000, (1, seq), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
              "token_type_ids": np.zeros_like(ids)}
    variants = {"dense": tc.compile(model)}
    for pattern in ("block", "unstructured"):
        cfg = SparsifyConfig(sparsity=0.8, pattern=pattern, decide="auto")
        variants[pattern] = tc.compile(model, config=tc.CompressConfig(passes=[cfg]))
    times = interleaved_ms(variants, inputs, rounds)
    ref = variants["dense"].run(inputs)["last_hidden_state"]
    print(f"\nall-MiniLM-L6-v2 (1x{seq}), 80% sparsity, decide=auto, no fine-tuning")
    for key, cm in variants.items():
        fid = reference.fidelity(ref, cm.run(inputs)["last_hidden_state"])
        sparse = [r for r in cm.pass_log if str(r.get("storage", "")).startswith("bsr")]
        print(f"{key:>14}: cosine vs dense {fid['cosine']:.4f}  latency {times[key]:.2f} ms "
              f"({times['dense'] / times[key]:.2f}x dense); {len(sparse)} of "
              f"{len(cm.pass_log)} layers sparse")
        decided = [r for r in cm.pass_log if "break_even" in r]
        for row in decided[:6]:  # layer 0's six weight matmuls (Q, K, V, out, FFN in/out)
            print(f"{'':>16}{row['layer']}: {row.get('storage')} break_even="
                  f"{row.get('break_even')} dense {row.get('dense_ms')} ms, sparse "
                  f"{row.get('sparse_ms')} ms (predicted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--minilm", action="store_true", help="also MiniLM at 80%% (slow)")
    parser.add_argument("--only", choices=("gemv", "gemm", "ffn", "none"), default=None)
    args = parser.parse_args()
    shapes = {"gemv": ("GEMM 1x768x3072", gemm(1, 768, 3072), (1, 768)),
              "gemm": ("GEMM 128x768x3072", gemm(128, 768, 3072), (128, 768)),
              "ffn": ("MiniLM FFN 128x384->1536->384", ffn(), (1, 128, 384))}
    for key, (name, model, x_shape) in shapes.items():
        if args.only in (None, key):
            bench_shape(name, model, x_shape, args.rounds)
    if not args.skip_digits:
        bench_digits(args.rounds)
    if args.minilm:
        bench_minilm(args.rounds)


if __name__ == "__main__":
    main()
