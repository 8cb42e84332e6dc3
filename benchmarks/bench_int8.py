"""Our int8 kernels vs onnxruntime int8 vs our fp32 vs onnxruntime fp32, side by side.

CNNs (ResNet-18, MobileNetV2 from ``zoo_vision``): ours = ``QuantizeConfig(scheme="int8")``
calibrated on a few random images, onnxruntime = ``quantize_static`` QDQ per-channel on the same
images (its fused QLinearConv path). MiniLM (b1, b8, seq 128) and the GEMMs 1x768x3072 and
128x768x3072: ours = ``int8-dynamic`` (per-token activation scale), onnxruntime =
``quantize_dynamic``. 2 threads, interleaved rounds, median of per-round medians (ms).
Goals: ours int8 <= 0.8x the faster onnxruntime engine; GEMMs >= 1.8x faster than our fp32.
"ours QDQ" (CNNs): onnxruntime's QDQ model itself, pre-quantized, compiled by us (FoldQDQ);
"QDQ/ORT QDQ" compares it with onnxruntime running that same model.

    python benchmarks/bench_int8.py [--cases gemm1 gemm128 resnet18 mobilenet_v2 minilm minilm8]
        [--rounds 5] [--budget 1.0] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from bench_schedules import gemm, time_rounds  # noqa: E402

import tvmcompress as tc  # noqa: E402
from tvmcompress import reference, runtime, zoo, zoo_vision  # noqa: E402
from tvmcompress.passes.quantize import QuantizeConfig  # noqa: E402

CASES = ("gemm1", "gemm128", "resnet18", "mobilenet_v2", "minilm", "minilm8")
TOKENS = ("input_ids", "attention_mask", "token_type_ids")


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def onnx_case(name: str) -> tuple[onnx.ModelProto, dict | None]:
    """The float ONNX model and its input shapes (None: static already)."""
    if name.startswith("gemm"):
        return gemm(int(name[4:]))[0], None
    if name.startswith("minilm"):
        return zoo.minilm(), {n: [int(name[6:] or 1), 128] for n in TOKENS}
    return zoo_vision.build(name), None


def ort_int8(model: onnx.ModelProto, calib: list[dict] | None, tmp: Path) -> str:
    """onnxruntime's own int8 model: quantize_static QDQ per-channel (calib given) or
    quantize_dynamic."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx.save(model, tmp / "f.onnx")
    quant_pre_process(str(tmp / "f.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    if calib is None:
        quantize_dynamic(str(tmp / "pre.onnx"), str(tmp / "q.onnx"))
    else:
        quantize_static(str(tmp / "pre.onnx"), str(tmp / "q.onnx"), _Reader(calib),
                        quant_format=QuantFormat.QDQ, per_channel=True)
    return str(tmp / "q.onnx")


def engines(name: str, tmp: Path) -> dict:
    """engine name -> zero-argument run function, all on the same random inputs."""
    model, shapes = onnx_case(name)
    loaded = tc.load(model, input_shapes=shapes) if shapes else tc.load(model)
    inputs = runtime.random_inputs(loaded.signature)
    calib = None
    if name in zoo_vision.NETS:
        rng = np.random.default_rng(1)
        calib = [{k: rng.standard_normal(v.shape).astype("float32") for k, v in inputs.items()}
                 for _ in range(4)]
        cfg = QuantizeConfig(scheme="int8", calibration={
            k: np.concatenate([c[k] for c in calib]) for k in inputs})
    else:
        cfg = QuantizeConfig(scheme="int8-dynamic")
    int8_path = ort_int8(model, calib, tmp)
    builds = [("ours int8", loaded, [cfg]), ("ours fp32", loaded, [])]
    if calib is not None:  # onnxruntime's QDQ model, pre-quantized, compiled by us
        builds.append(("ours QDQ", tc.load(onnx.load(int8_path)), []))
    runs = {}
    for label, source, config in builds:
        cm = tc.compile(source, config=tc.CompressConfig(config))
        tensors, main = cm.runner.prepare(inputs), cm.runner._vm["main"]
        runs[label] = (lambda m, t: lambda: m(*t))(main, tensors)
    for label, path in (("ORT int8", int8_path), ("ORT fp32", model)):
        session = reference.ort_session(path, threads=THREADS)
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        runs[label] = (lambda s, f: lambda: s.run(None, f))(session, feed)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cols = ("ours int8", "ORT int8", "ours fp32", "ORT fp32", "ours QDQ")
    print(f"{'model':<14}" + "".join(f"{c + ' ms':>14}" for c in cols)
          + f"{'int8/bestORT':>14}{'fp32/int8':>11}{'QDQ/ORT QDQ':>13}  goals")
    for name in args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            ms = time_rounds(engines(name, Path(tmp)), args.rounds, args.budget, args.repeat)
        vs_ort = ms["ours int8"] / min(ms["ORT int8"], ms["ORT fp32"])
        speedup = ms["ours fp32"] / ms["ours int8"]
        missed = (["<=0.8x ORT"] if vs_ort > 0.8 else []) + (
            [">=1.8x fp32"] if name.startswith("gemm") and speedup < 1.8 else []) + (
            ["not slower than fp32"] if speedup < 1.0 else [])
        qdq = f"{ms['ours QDQ'] / ms['ORT int8']:>13.2f}" if "ours QDQ" in ms else f"{'-':>13}"
        print(f"{name:<14}" + "".join(f"{ms[c]:>14.3f}" if c in ms else f"{'-':>14}"
                                      for c in cols)
              + f"{vs_ort:>14.2f}{speedup:>11.2f}{qdq}  "
              + ("met" if not missed else "MISSED " + ", ".join(missed)), flush=True)


if __name__ == "__main__":
    main()
