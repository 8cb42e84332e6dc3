"""Which layers the Quantize pass touches, and the arrays each one gets (no IR built here)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from tvmcompress.passes import _quant_emit as emit
from tvmcompress.passes import _quant_math as qm

KINDS = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d"}
EXOTIC = {"binary": (1, qm.binary_weights), "ternary": (2, qm.ternary_weights),
          "pow2": (4, qm.pow2_weights)}
BITS = {"int8": 8, "int8-dynamic": 8, "int4": 4, "fp16": 16, "bf16": 16, "fp32": 32}


@dataclass
class Layer:
    """One eligible contraction: ``var = op(x, W)`` with W a float32 constant."""

    name: str
    var: relax.Var
    call: relax.Call
    weight: np.ndarray
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return KINDS[self.call.op.name]

    @property
    def out_axis(self) -> int:
        """Axis of the output channels in the weight (matmul [K, N]; conv OIHW)."""
        return 1 if self.kind == "matmul" else 0

    @property
    def in_axis(self) -> int:
        """Channel axis of the layer's input x (for its per-channel mean)."""
        return -1 if self.kind == "matmul" else 1


def _static_shape(expr: relax.Expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):
        return None


def _ineligible(call: relax.Call) -> str | None:
    x, w = call.args
    if not isinstance(w, tvm.ir.expr.Constant):
        return "weight (2nd operand) is not a constant"
    if str(w.ty.dtype) != "float32" or str(x.ty.dtype) != "float32":
        return f"operands are {x.ty.dtype} x {w.ty.dtype}, not float32"
    if _static_shape(x) is None:
        return "input has no static shape"
    if call.op.name == "relax.matmul":
        return None if w.ty.ndim == 2 and x.ty.ndim >= 2 else "not x[..., K] @ W[K, N]"
    a = call.attrs
    if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return f"layout {a.data_layout}/{a.kernel_layout} is not NCHW/OIHW"
    return None


def find_layers(func: relax.Function) -> tuple[list[Layer], list[tuple[str, str]]]:
    """Eligible layers in program order, named ``<kind><i>`` like LowRankSplit names them;
    and (name, reason) for the contractions skipped."""
    layers, skipped, counts = [], [], dict.fromkeys(KINDS.values(), 0)
    for block in func.body.blocks:
        for b in block.bindings:
            call = b.value
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name in KINDS):
                continue
            kind = KINDS[call.op.name]
            name = f"{kind}{counts[kind]}"
            counts[kind] += 1
            reason = _ineligible(call)
            if reason:
                skipped.append((name, reason))
                continue
            layers.append(Layer(name, b.var, call, call.args[1].value.numpy()))
    return layers, skipped


def auto_activation() -> tuple[str, str]:
    """(mode, why) for ``activation="auto"``: the current target's, else this host's."""
    target = tvm.target.Target.current(allow_none=True)
    arch = (platform.machine() if target is None else
            f"{target.kind.name} {target.attrs.get('mtriple', '')} {' '.join(target.keys)}")
    if any(k in arch.lower() for k in ("arm", "aarch64", "cuda", "gpu")):
        return "int8-sym", "ARM sdot/smull and CUDA dp4a multiply s8 x s8"
    return "uint8-asym", ("x86 AVX2 vpmaddubsw / VNNI vpdpbusd multiply u8 x s8, and uint8 "
                          "keeps all 256 codes for ReLU outputs")


def int8_weight_bits() -> int:
    """7 on x86 without VNNI (AVX2, AVX-512 without VNNI): our kernels multiply u8 x s8 with
    ``vpmaddubsw``, whose int16 pair sums saturate beyond |w| = 64 (``2 * 255 * 64 < 2**15``);
    weights in [-63, 63] keep them exact at full speed, as onnxruntime's ``reduce_range``
    does. 8 elsewhere (VNNI ``vpdpbusd``, ARM, CUDA accumulate in int32). Applied with
    ``activation="auto"`` only: an explicit activation mode asks for the same integer model
    on every target (8-bit weights; our kernels then take the exact int16 path on AVX2)."""
    from tvm.target import codegen

    target = tvm.target.Target.current(allow_none=True)
    if target is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return 8
        target = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
    if target.kind.name != "llvm" or not triple.startswith(("x86", "amd64")):
        return 8
    vnni = any(codegen.target_has_features(f, target) for f in ("avx512vnni", "avxvnni"))
    return 8 if vnni else 7


# Convs whose int8 kernel measured slower than our fp32 one on MobileNetV2 (AVX2, 2 threads,
# interleaved: whole model int8/fp32 1.9x with every conv int8, 1.5x with depthwise kept
# fp32, 1.1x with these short reductions fp32 too): too few MACs per output to pay for the
# quantize/requantize epilogue and the NCHW layout changes around an int8 conv.
SHORT_REDUCTION = 64


def int8_keeps_float(layer: Layer) -> str | None:
    """Why an int8 scheme leaves ``layer`` float (None: quantize it). ``per_layer`` names
    override this (the caller asks only for the default scheme)."""
    if layer.kind != "conv2d":
        return None
    if int(layer.call.attrs.groups) > 1 and layer.weight.shape[1] == 1:
        return ("depthwise: kept fp32 (~1 MAC per byte loaded: int8 saves no compute, and "
                "our fp32 NCHWc depthwise kernel is faster); per_layer={name: 'int8'} forces it")
    k = int(np.prod(layer.weight.shape[1:]))
    if k < SHORT_REDUCTION:
        return (f"reduction of {k} < {SHORT_REDUCTION} MACs per output: kept fp32 (int8 "
                "measured slower here); per_layer={name: 'int8'} forces it")
    return None


def weight_correction(layer: Layer, w_deq: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """Per-output-channel ``-E[x] . (W_q - W)``: the mean output shift weight rounding causes
    (Nagel et al. 2019, data-free quantization; E[x] from the calibration data)."""
    dw = (w_deq - layer.weight).astype(np.float64)
    if layer.kind == "matmul":
        return (-(mean_x.astype(np.float64) @ dw)).astype(np.float32)
    groups = int(layer.call.attrs.groups)
    out_ch, in_per_group = dw.shape[:2]
    per_out = np.repeat(mean_x.reshape(groups, in_per_group), out_ch // groups, axis=0)
    return (-(dw.sum(axis=(2, 3)) * per_out).sum(axis=1)).astype(np.float32)


def int4_arrays(layer: Layer, group: int, symmetric: bool):
    """Packed int4 groups of the weight as a [R, N] matrix (R = reduction length), zero-padded
    to a whole number of groups; returns the arrays and the dequantized weight."""
    w = layer.weight if layer.kind == "matmul" else layer.weight.reshape(
        layer.weight.shape[0], -1).T
    rows = w.shape[0]
    padded = -(-rows // group) * group
    w = np.pad(w, ((0, padded - rows), (0, 0)))
    packed, scale, offset = qm.quantize_groups_int4(w, group, symmetric)
    deq = qm.dequantize_groups_int4(packed, scale, offset, group)[:rows]
    deq = deq if layer.kind == "matmul" else deq.T.reshape(layer.weight.shape)
    arrays = [packed, scale] if offset is None else [packed, scale, offset]
    return arrays, deq


def plan_layer(layer: Layer, scheme: str, cfg, stats, mode: str):
    """(emit function ``(bb, call) -> expr``, record fields, dequantized weight or None) for
    one layer; ``stats``: its calibration statistics (int8 static), ``mode``: activation."""
    w, axis, fields = layer.weight, layer.out_axis, {}
    if scheme in ("int8", "int8-dynamic"):
        bits = int8_weight_bits() if cfg.activation == "auto" else 8  # explicit: portable
        wq, ws = qm.quantize_per_channel(w, axis, bits)
        deq, after = qm.dequantize_per_channel(wq, ws, axis), wq.nbytes + ws.nbytes
        if scheme == "int8-dynamic":
            return (lambda bb, c: emit.emit_int8_dynamic(bb, c, wq, ws, cfg.per_token)), \
                {"bytes_after": after, "act_scale": "runtime", "w_bits": bits}, deq
        lo, hi = qm.activation_range(stats.sample(), stats.lo, stats.hi, cfg.method, mode,
                                     cfg.percentile)
        s, z = qm.activation_qparams(lo, hi, mode)
        fields = {"bytes_after": after, "act_scale": s, "act_zero": z, "act_mode": mode,
                  "w_bits": bits}
        return (lambda bb, c: emit.emit_int8_static(bb, c, wq, ws, (s, z, mode), None)), \
            fields, deq
    if scheme == "int4":
        arrays, deq = int4_arrays(layer, cfg.group_size, cfg.symmetric)
        fields = {"bytes_after": sum(a.nbytes for a in arrays), "group": cfg.group_size}
        return (lambda bb, c: emit.emit_int4(bb, c, arrays, w.shape, cfg.group_size)), \
            fields, deq
    if scheme in ("fp16", "bf16"):
        dtype = "float16" if scheme == "fp16" else "bfloat16"
        return (lambda bb, c: emit.emit_cast(bb, c, w, dtype)), {"bytes_after": w.size * 2}, \
            None
    bits, fake = EXOTIC[scheme]
    deq = fake(w, axis)
    ideal = int(w.size * bits / 8 + w.shape[axis] * 4)
    fields = {"bytes_after": w.nbytes, "note": f"stored as float32 ({ideal} B when packed)"}
    return (lambda bb, c: emit.contract(c, c.args[0], emit.const(deq))), fields, deq
