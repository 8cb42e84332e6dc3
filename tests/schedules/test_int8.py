"""Tensorized AVX2 int8 kernels: int32 accumulators bit-exact against numpy integer math
(GEMM batch 1 / 128 / odd, conv 1x1 / 3x3 / strided / odd channels, depthwise through the
generic rule), both intrinsics, the intrinsic really used, and a quantized model equal to
the unscheduled build."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from schedule_helpers import fused, run, unscheduled_build
from tvm import relax

import tvmcompress as tc
from tvmcompress.passes._quant_plan import int8_weight_bits
from tvmcompress.passes.quantize import QuantizeConfig
from tvmcompress.schedules import build
from tvmcompress.schedules.cpu.int8_pack import choose_intrin, pack_conv_np, pack_matmul_np
from tvmcompress.schedules.intrin.arm_int8 import DOT_SDOT
from tvmcompress.schedules.intrin.x86_int8 import DOT_AVX512, DOT_S16, DOT_U8S8, DOT_VNNI
from tvmcompress.targets import resolve_target

# The AVX2 kernels (TVM ships no AVX2 int8 intrinsic): pinned, so an AVX-512 host tests them
# too; the 16-lane kernels are checked by ``test_avx512_builds_use_their_instructions``.
CPU = "x86-64-avx2"


def _module(x_shape, x_dtype, w: np.ndarray, conv: dict | None) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            op = (relax.op.matmul(x, relax.const(w), out_dtype="int32") if conv is None else
                  relax.op.nn.conv2d(x, relax.const(w), out_dtype="int32", **conv))
            y = bb.emit_output(op)
        bb.emit_func_output(y)
    return bb.get()


def _build_and_run(mod, x):
    executable, info = build(mod, resolve_target(CPU))
    assert not info.unscheduled
    return run(executable, [x]), executable


def _reference_conv(x, w, stride, pad, groups=1):
    """conv2d in int64 numpy (NCHW, OIHW)."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, ipg, kh, kw = w.shape
    n, _, h, wd = x.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    for g in range(groups):
        xs = x[:, g * ipg:(g + 1) * ipg]
        ws = w[g * (o // groups):(g + 1) * (o // groups)].astype(np.int64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out[:, g * (o // groups):(g + 1) * (o // groups)] += np.einsum(
                    "nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


def _data(rng, shape, dtype):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(dtype)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 768, 64), (128, 96, 48), (7, 77, 24)])
@pytest.mark.parametrize("wmax", [64, 127])  # 7-bit weights: u8 x s8; 8-bit: int16 path
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_gemm_accumulator_exact(m, k, n, wmax, x_dtype):
    rng = np.random.default_rng(m + k + n)
    w = rng.integers(-wmax, wmax + 1, (k, n)).astype(np.int8)
    w[0, 0], w[-1, -1] = -wmax, wmax  # the extremes, where vpmaddubsw would saturate
    x = _data(rng, (m, k), x_dtype)
    x[0, :2] = 255 if x_dtype == "uint8" else -128
    out, executable = _build_and_run(_module((m, k), x_dtype, w, None), x)
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.astype(np.int64))
    intrin = "pmadd.ub.sw" if wmax == 64 else "pmadd.wd"
    assert intrin in executable.mod.imports[0].inspect_source("ll")


@pytest.mark.parametrize(("c", "o", "hw", "ksize", "stride", "pad"), [
    (16, 32, 8, 1, 1, 0), (5, 16, 9, 3, 1, 1), (8, 24, 11, 3, 2, 1), (3, 8, 13, 7, 2, 3)])
@pytest.mark.parametrize(("wmax", "x_dtype"), [(64, "int8"), (127, "uint8")])
def test_conv_accumulator_exact(c, o, hw, ksize, stride, pad, wmax, x_dtype):
    rng = np.random.default_rng(c * o + hw)
    w = rng.integers(-wmax, wmax + 1, (o, c, ksize, ksize)).astype(np.int8)
    x = _data(rng, (1, c, hw, hw), x_dtype)
    conv = {"strides": [stride] * 2, "padding": [pad] * 4}
    mod = _module(x.shape, x_dtype, w, conv)
    out, executable = _build_and_run(mod, x)
    np.testing.assert_array_equal(out, _reference_conv(x, w, stride, pad))
    assert "llvm.x86.avx2.pmadd" in executable.mod.imports[0].inspect_source("ll")
    kernels = [gv.name_hint for gv in fused(mod, resolve_target(CPU).tvm_target).functions
               if "int8_conv" in gv.name_hint]
    # channels that fill 8-lane blocks: the conv reads and writes NCHW8c itself
    assert len(kernels) == 1 and ("int8_conv_nchwc" in kernels[0]) == (c % 8 == 0), kernels


def test_int8_convs_share_the_float_convs_blocked_layout():
    """fp32 depthwise conv -> quantize -> int8 1x1 conv -> dequantize -> fp32 1x1 conv -> int8
    3x3 conv: every kernel reads and writes NCHW8c, so layout transforms are left only at the
    entry and the exit (between each int8 conv and its float neighbours there were two), and
    the output equals TVM's unscheduled NCHW build."""
    rng = np.random.default_rng(5)
    dw = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w8 = rng.integers(-64, 65, (32, 16, 1, 1)).astype(np.int8)
    fp = rng.standard_normal((16, 32, 1, 1)).astype(np.float32) * 0.1
    w3 = rng.integers(-127, 128, (24, 16, 3, 3)).astype(np.int8)  # 8-bit: the int16 path
    scale = rng.uniform(0.01, 0.02, (1, 32, 1, 1)).astype(np.float32)

    def quantize(bb, t, scale):
        t = bb.emit(relax.op.round(relax.op.divide(t, relax.const(scale, "float32"))))
        return bb.emit(relax.op.astype(relax.op.clip(t, 0, 255), "uint8"))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(dw), padding=1,
                                                            groups=16)))
            t = bb.emit(relax.op.nn.conv2d(quantize(bb, t, 0.02), relax.const(w8),
                                           out_dtype="int32"))
            t = bb.emit(relax.op.multiply(relax.op.astype(t, "float32"), relax.const(scale)))
            t = bb.emit(relax.op.nn.conv2d(t, relax.const(fp)))
            out = bb.emit_output(relax.op.nn.conv2d(quantize(bb, t, 0.05), relax.const(w3),
                                                    padding=1, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    target = resolve_target(CPU).tvm_target
    kernels = [gv.name_hint for gv in fused(mod, target).functions]
    assert sum("int8_conv_nchwc" in k for k in kernels) == 2, kernels
    assert sum("layout_transform" in k for k in kernels) == 2, kernels
    data = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    out, _ = _build_and_run(mod, data)
    np.testing.assert_array_equal(out, run(unscheduled_build(mod, target), [data]))


def test_conv_with_a_dequantized_residual_stays_tensorized():
    """A pre-quantized ResNet's block: int8 conv + dequantize(residual that another conv wrote
    and quantized, and the next block reads too). FuseOps puts the residual's dequantize first
    in the conv's kernel; it is computed where the epilogue reads it, and the conv keeps its
    tensorized kernel (generic loops ran these convs 2.9x slower)."""
    rng = np.random.default_rng(9)
    w = rng.integers(-64, 65, (16, 16, 3, 3)).astype(np.int8)
    w2 = rng.integers(-2, 3, (16, 16, 1, 1)).astype(np.float32)
    x = _data(rng, (1, 16, 8, 8), "uint8")
    f = rng.integers(-3, 4, (1, 16, 8, 8)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    fv = relax.Var("f", relax.TensorType(f.shape, "float32"))
    scale, zero = relax.const(0.25), relax.const(3, "int8")
    with bb.function("main", [xv, fv]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(relax.op.nn.conv2d(fv, relax.const(w2)), scale, zero,
                                          axis=1))
            res = bb.emit(relax.op.dequantize(q, scale, zero, axis=1))
            y = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), padding=1, out_dtype="int32"))
            y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(0.5)))
            out = bb.emit_output(relax.Tuple([relax.op.add(y, res), q]))  # q: read twice
        bb.emit_func_output(out)
    mod = bb.get()
    kernels = [gv.name_hint for gv in fused(mod, resolve_target(CPU).tvm_target).functions]
    assert any(k.startswith("fused_cast") and "int8_conv" in k for k in kernels), kernels
    executable, info = build(mod, resolve_target(CPU))
    assert not info.unscheduled
    assert "llvm.x86.avx2.pmadd" in executable.mod.imports[0].inspect_source("ll")
    residual = np.einsum("nchw,oc->nohw", f, w2[:, :, 0, 0])
    residual = (np.clip(np.round(residual / 0.25) + 3, -128, 127) - 3) * 0.25
    expected = _reference_conv(x, w, 1, 1) * 0.5 + residual
    np.testing.assert_allclose(run(executable, [x, f]), expected, rtol=1e-6)


@pytest.mark.parametrize(("c", "hw", "k", "stride", "x_dtype"), [
    (24, 10, 3, 1, "uint8"), (32, 7, 3, 2, "int8"), (16, 9, 5, 1, "uint8"), (12, 10, 3, 1, "int8")])
def test_depthwise_conv_exact(c, hw, k, stride, x_dtype):
    """int8 depthwise convs with int32 sums: NCHW8c kernels when the channels fill 8-lane
    blocks (12 do not: the generic NCHW rule)."""
    rng = np.random.default_rng(c + hw)
    w = rng.integers(-127, 128, (c, 1, k, k)).astype(np.int8)
    x = _data(rng, (1, c, hw, hw), x_dtype)
    conv = {"strides": [stride] * 2, "padding": [k // 2] * 4, "groups": c}
    mod = _module(x.shape, x_dtype, w, conv)
    out, _ = _build_and_run(mod, x)
    np.testing.assert_array_equal(out, _reference_conv(x, w, stride, k // 2, groups=c))
    kernels = [gv.name_hint for gv in fused(mod, resolve_target(CPU).tvm_target).functions]
    assert ("conv2d_nchwc" in kernels) == (c % 8 == 0), kernels


def test_intrinsic_choice_and_packing():
    """u8 x s8 only when no pair sum can saturate int16; packed blocks are [8, r]."""
    assert choose_intrin(np.array([-64, 64]), ("avx2",)) == DOT_U8S8
    assert choose_intrin(np.array([-65, 3]), ("avx2",)) == DOT_S16
    assert choose_intrin(np.array([0, 2**16]), ("avx2",)) is None
    assert choose_intrin(np.array([-128, 127]), ("avx2", "avx512bw", "avx512vnni")) == DOT_VNNI
    assert choose_intrin(np.array([-64, 64]), ("avx2", "avx512bw")) == DOT_AVX512
    assert choose_intrin(np.array([-64, 64]), ("dotprod",)) == DOT_SDOT
    assert choose_intrin(np.array([-64, 64]), ()) is None  # plain NEON: generic rules
    w = np.arange(5 * 16).reshape(5, 16)
    packed = pack_matmul_np(w, DOT_S16)
    assert packed.shape == (2, 3, 8, 2) and packed.dtype == np.int16
    assert packed[1, 0, 3, 1] == w[1, 11] and packed[0, 2, 0, 1] == 0  # K padded with zeros
    conv = pack_conv_np(np.arange(16 * 3 * 2 * 2).reshape(16, 3, 2, 2), DOT_U8S8)
    assert conv.shape == (2, 1, 2, 2, 8, 4) and conv[1, 0, 1, 0, 2, 1] == 10 * 12 + 1 * 4 + 2


def _cnn(rng, head: str = "flatten", batch: int = 1) -> onnx.ModelProto:
    """conv 8 -> 64 (3x3) -> ReLU -> conv 64 -> 16 (1x1) -> ReLU -> classifier over the
    flattened map (``head="flatten"``) or a global average pool (``"pool"``)."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    # reductions of 72 and 64 MACs per output: long enough to be quantized (_quant_plan)
    w1 = rng.standard_normal((64, 8, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((16, 64, 1, 1)).astype(np.float32) * 0.1
    features = 16 * 8 * 8 if head == "flatten" else 16
    fc = rng.standard_normal((features, 24)).astype(np.float32) * 0.05
    pool = oh.make_node("Flatten", ["r2"], ["f"]) if head == "flatten" else \
        oh.make_node("ReduceMean", ["r2"], ["f"], axes=[2, 3], keepdims=0)
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("Conv", ["r1", "w2"], ["c2"]),
             oh.make_node("Relu", ["c2"], ["r2"]),
             pool,
             oh.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = oh.make_graph(nodes, "cnn",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 8, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 24])],
                          [numpy_helper.from_array(a, n)
                           for a, n in ((w1, "w1"), (w2, "w2"), (fc, "fc"))])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic"])
def test_quantized_model_equals_unscheduled_build(scheme):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    calib = {"x": rng.standard_normal((4, 8, 8, 8)).astype(np.float32)}
    cfg = QuantizeConfig(scheme=scheme, calibration=calib if scheme == "int8" else None)
    cm = tc.compile(tc.load(_cnn(rng)), CPU, config=tc.CompressConfig([cfg]))
    assert not [k for k in cm.build_info.unscheduled if "int8" in k or "conv" in k]
    kernels = [gv.name_hint for gv in fused(cm.ir, resolve_target(CPU).tvm_target).functions]
    assert sum("int8_conv" in k for k in kernels) == 2 and any("int8_gemm" in k for k in kernels)
    expected = run(unscheduled_build(cm.ir, resolve_target(CPU).tvm_target), [x])
    got = next(iter(cm.run([x]).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic"])
def test_global_pool_head_quantizes(scheme, batch):
    """A CNN whose classifier reads a global average pool (VGG, EfficientNet, most torch
    exports): the pool's ``[N, C]`` output must leave the blocked layout before the
    classifier's per-token scale reduces over its channels (failed to build with
    int8-dynamic). Bounded against onnxruntime's float model, exact against unscheduled TVM."""
    from tvmcompress import reference

    rng = np.random.default_rng(12)
    model = _cnn(rng, head="pool", batch=batch)
    x = rng.standard_normal((batch, 8, 8, 8)).astype(np.float32)
    calib = {"x": rng.standard_normal((4, 8, 8, 8)).astype(np.float32)}
    cfg = QuantizeConfig(scheme=scheme, calibration=calib if scheme == "int8" else None)
    cm = tc.compile(tc.load(model), CPU, config=tc.CompressConfig([cfg]))
    kernels = [gv.name_hint for gv in fused(cm.ir, resolve_target(CPU).tvm_target).functions]
    assert sum("int8_conv" in k for k in kernels) == 2 and any("int8_gemm" in k for k in kernels)
    got = next(iter(cm.run([x]).values()))
    expected = run(unscheduled_build(cm.ir, resolve_target(CPU).tvm_target), [x])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ref = reference.ort_run(model, {"x": x})["y"]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_weight_bits_follow_the_target():
    """7-bit weights (u8 x s8 path exact) on x86 without VNNI; 8 with VNNI and on ARM."""
    for preset, bits in (("x86-64-avx2", 7), ("x86-64-vnni", 8), ("raspberry-pi-5", 8)):
        with resolve_target(preset).tvm_target:
            assert int8_weight_bits() == bits, preset


@pytest.mark.parametrize(("preset", "wmax", "instruction"), [
    ("x86-64-vnni", 127, "vpdpbusd"), ("x86-64-avx512", 64, "vpmaddubsw")])
@pytest.mark.parametrize("conv", [False, True])
def test_avx512_builds_use_their_instructions(preset, wmax, instruction, conv):
    """The 16-lane kernels are in the assembly; a conv over 32 channels runs in NCHW16c, the
    AVX-512 block; on an AVX-512 (VNNI) host the results are exact too."""
    rng = np.random.default_rng(0)
    if conv:
        w = rng.integers(-wmax, wmax + 1, (32, 32, 3, 3)).astype(np.int8)
        x = _data(rng, (1, 32, 8, 8), "uint8")
        mod = _module(x.shape, "uint8", w, {"padding": [1] * 4})
    else:
        w = rng.integers(-wmax, wmax + 1, (64, 32)).astype(np.int8)
        x = _data(rng, (4, 64), "uint8")
        mod = _module(x.shape, "uint8", w, None)
    executable, info = build(mod, resolve_target(preset))
    asm = executable.mod.imports[0].inspect_source("asm")
    assert not info.unscheduled and instruction in asm and "zmm" in asm
    if not resolve_target(preset).why_not_runnable_here():  # an AVX-512 host: run it too
        expected = _reference_conv(x, w, 1, 1) if conv else x.astype(np.int64) @ w
        np.testing.assert_array_equal(run(executable, [x]), expected)
    if conv:
        kernels = [gv.name_hint for gv in fused(mod, resolve_target(preset).tvm_target).functions]
        assert "int8_conv_nchwc" in kernels


@pytest.mark.parametrize(("preset", "instruction"), [
    ("raspberry-pi-5", "sdot"), ("raspberry-pi-4", "smlal")])
def test_aarch64_builds_use_dot_products_or_widening_multiplies(preset, instruction):
    """Compile-only here; tests/test_cpp.py runs int8 models on both boards under qemu."""
    w = np.random.default_rng(0).integers(-127, 128, (64, 32)).astype(np.int8)
    executable, info = build(_module((4, 64), "int8", w, None), resolve_target(preset))
    asm = executable.mod.imports[0].inspect_source("asm")
    assert not info.unscheduled and f"\t{instruction}\t" in asm


@pytest.mark.parametrize("preset", ["raspberry-pi-4", "raspberry-pi-5"])
def test_aarch64_int8_convs_build(preset):
    """NEON's block is 4 channels: a plain int8 conv is an NCHW4c ``sdot`` kernel with
    dotprod (raspberry-pi-5), a generic NCHW kernel without (raspberry-pi-4, ``smlal``); a
    depthwise conv is an NCHW4c kernel on both."""
    rng = np.random.default_rng(4)
    target = resolve_target(preset)
    dotprod = preset == "raspberry-pi-5"
    for w, groups, kernel in ((rng.integers(-127, 128, (16, 8, 3, 3)), 1,
                               "int8_conv_nchwc" if dotprod else "int8_group_conv"),
                              (rng.integers(-127, 128, (8, 1, 3, 3)), 8, "conv2d_nchwc")):
        conv = {"strides": [1, 1], "padding": [1] * 4, "groups": groups}
        mod = _module((1, 8, 6, 6), "int8", w.astype(np.int8), conv)
        _, info = build(mod, target)
        assert not info.unscheduled
        assert kernel in [gv.name_hint for gv in fused(mod, target.tvm_target).functions]
