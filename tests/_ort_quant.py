"""Zoo models quantized by onnxruntime's own tools, and IR probes for integer conv/matmul."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from tvm import relax

from tvmcompress import zoo

# One output quantization step, read as a float difference (dequantized values differ by the
# scale up to float rounding).
ONE_STEP = 1.0 + 1e-5
SHAPES = {"mlp": [1, 64], "cnn": [1, 3, 32, 32], "transformer": [1, 16, 64]}


class _Reader:
    """onnxruntime CalibrationDataReader over a few seeded standard-normal batches."""

    def __init__(self, shape, batches: int = 4):
        rng = np.random.default_rng(123)
        self._it = iter([{"x": rng.standard_normal(shape).astype("float32")}
                         for _ in range(batches)])

    def get_next(self):
        return next(self._it, None)


def prepared(name: str, tmp: Path) -> Path:
    """Zoo model ``name`` at batch 1, through onnxruntime's quant_pre_process (as STACK.md says:
    weights as initializers, shapes inferred), saved under ``tmp``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = zoo.build(name)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, tmp / f"{name}.onnx")
    quant_pre_process(str(tmp / f"{name}.onnx"), str(tmp / f"{name}_pre.onnx"))
    return tmp / f"{name}_pre.onnx"


def quantize(name: str, tmp: Path, scheme: str, reduce_range: bool = False) -> onnx.ModelProto:
    """``scheme``: "QDQ" / "QOperator" (quantize_static, default int8 types) or "dynamic"."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    src, dst = prepared(name, tmp), tmp / f"{name}_{scheme}.onnx"
    if scheme == "dynamic":
        quantize_dynamic(str(src), str(dst), reduce_range=reduce_range)
    else:
        quantize_static(str(src), str(dst), _Reader(SHAPES[name]),
                        quant_format=getattr(QuantFormat, scheme), reduce_range=reduce_range)
    return onnx.load(str(dst))


def seeded(name: str, seed: int = 7) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(SHAPES[name]).astype("float32")}


def output_scale(model: onnx.ModelProto) -> float | None:
    """Scale of the DequantizeLinear that produces the graph output (one quantization step),
    or None when a float op produces it."""
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    if node.op_type != "DequantizeLinear":
        return None
    init = {t.name: t for t in model.graph.initializer}
    return float(onnx.numpy_helper.to_array(init[node.input[1]]))


def conv_matmul_dtypes(mod) -> list[tuple[str, tuple[str, ...], str]]:
    """(op, operand dtypes, result dtype) of every conv2d/matmul in ``mod["main"]``."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in (
                "relax.nn.conv2d", "relax.matmul"):
            found.append((expr.op.name, tuple(str(a.ty.dtype) for a in expr.args),
                          str(expr.ty.dtype)))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def assert_integer(mod, float_ops: int = 0) -> int:
    """All but ``float_ops`` conv2d/matmuls take 8-bit operands and accumulate in int32; returns
    how many are integer."""
    ops = conv_matmul_dtypes(mod)
    integer = [o for o in ops if all(d in ("int8", "uint8") for d in o[1]) and o[2] == "int32"]
    floating = [o for o in ops if o not in integer]
    assert len(floating) == float_ops, f"not integer: {floating}"
    return len(integer)
