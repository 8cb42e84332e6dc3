"""int4 weight-only matmul: our kernel vs our fp32 vs onnxruntime MatMulNBits vs onnxruntime fp32.

Per case ``MxKxN`` (block/group 32): int4 = ``tc.compile`` of the float model with
``QuantizeConfig(scheme="int4", group_size=32)`` (packed nibbles dequantized in registers by
``schedules/cpu/int4_matmul.py``); fp32 = ``tc.compile`` of the float model (our fp32 GEMM/GEMV
rule); ORT-NBits = onnxruntime running a com.microsoft MatMulNBits node built with
``tvmcompress.nbits.quantize_nbits`` (default accuracy_level, fp32 compute); ORT-fp32 = the float
MatMul. Engines interleaved for ``--rounds`` rounds (start rotated), medians over rounds of
per-round medians (``bench_schedules.time_rounds``), ratios to our fp32 and to ORT-NBits.

    [BENCH_THREADS=2] python benchmarks/bench_int4.py [--cases 1x4096x4096,32x4096x4096]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bench_schedules import THREADS, gemm, time_rounds  # sets TVM_NUM_THREADS first
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import tvmcompress as tc
from tvmcompress import reference
from tvmcompress.nbits import quantize_nbits
from tvmcompress.passes.quantize import QuantizeConfig

BLOCK = 32


def nbits_model(w: np.ndarray, m: int):
    """x [m, K] @ W through one MatMulNBits node (4 bits, block 32, asymmetric zero points)."""
    k, n = w.shape
    b, scales, zps = quantize_nbits(w, 4, BLOCK)
    node = oh.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft",
                        K=k, N=n, bits=4, block_size=BLOCK)
    graph = oh.make_graph([node], "nbits",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(a, name)
                           for a, name in ((b, "B"), (scales, "S"), (zps, "Z"))])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17),
                                               oh.make_opsetid("com.microsoft", 1)])


def engines(m: int, k: int, n: int) -> tuple[dict, dict]:
    """name -> zero-argument run; and max |error| of each int4 engine vs numpy fp32."""
    fp32, _ = gemm(m, k, n)
    w = numpy_helper.to_array(fp32.graph.initializer[0])
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    runs, outputs = {}, {}
    int4 = tc.compile(fp32, config=tc.CompressConfig([QuantizeConfig(scheme="int4",
                                                                     group_size=BLOCK)]))
    assert not int4.build_info.unscheduled, int4.build_info.unscheduled
    ours = tc.compile(fp32)
    for name, compiled in (("int4", int4), ("fp32", ours)):
        tensors = compiled.runner.prepare({"x": x})
        main = compiled.runner._vm["main"]
        runs[name] = (lambda f, t: lambda: f(*t))(main, tensors)
        outputs[name] = compiled.run({"x": x})["y"]
    for name, model in (("ORT-NBits", nbits_model(w, m)), ("ORT-fp32", fp32)):
        session = reference.ort_session(model, threads=THREADS)
        runs[name] = (lambda s: lambda: s.run(None, {"x": x}))(session)
        outputs[name] = session.run(None, {"x": x})[0]
    scale = np.abs(x @ w).max()
    errors = {e: float(np.abs(outputs[e] - x @ w).max() / scale) for e in ("int4", "ORT-NBits")}
    return runs, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1x4096x4096,32x4096x4096")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per engine per round")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}  (shared machine, {THREADS} threads)")
    print(f"{args.rounds} interleaved rounds, medians (ms); block {BLOCK}")
    print("| case | ours int4 | ours fp32 | ORT MatMulNBits | ORT fp32 | fp32/int4 | "
          "NBits/int4 | rel err int4 / NBits |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        m, k, n = (int(v) for v in case.split("x"))
        runs, errors = engines(m, k, n)
        ms = time_rounds(runs, args.rounds, args.budget, args.repeat)
        print(f"| {case} | {ms['int4']:.3f} | {ms['fp32']:.3f} | {ms['ORT-NBits']:.3f} | "
              f"{ms['ORT-fp32']:.3f} | {ms['fp32'] / ms['int4']:.2f}x | "
              f"{ms['ORT-NBits'] / ms['int4']:.2f}x | {errors['int4']:.1e} / "
              f"{errors['ORT-NBits']:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
