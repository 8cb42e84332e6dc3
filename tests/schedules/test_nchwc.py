"""NCHWc layout pass: convs with whole-vector channel counts run blocked (``conv2d_nchwc``),
ReLU6 and pooling follow the layout, other convs stay NCHW; numerics against unscheduled TVM
(a conv -> ReLU6 -> depthwise -> max-pool chain) and the block width per target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import helper as oh
from schedule_helpers import (
    assert_parity,
    build_module,
    fused,
    onnx_model,
    run,
    unscheduled_build,
    weights,
)
from tvm import relax, s_tir
from tvm_ffi import get_global_func

import tvmcompress as tc
from tvmcompress.schedules.build import layout_passes
from tvmcompress.schedules.cpu import Conv2d, nchwc
from tvmcompress.schedules.cpu.conv_nchwc import tile_sizes
from tvmcompress.targets import resolve_target

_HAS_IF = get_global_func("s_tir.schedule.HasIfThenElse")
# Tests that count blocks or tiles pin AVX2 (8-lane blocks; it runs on any x86-64-v3 host);
# the others build for this host, whatever its vector width.
CPU = "x86-64-avx2"


def chain(c_in: int = 3, c: int = 16) -> tc.Model:
    """stem conv (c_in -> c) -> Clip(0, 6) -> depthwise 3x3 -> MaxPool 2x2 -> 1x1 conv."""
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("Clip", ["a", "lo", "hi"], ["b"]),
             oh.make_node("Conv", ["b", "w1"], ["d"], kernel_shape=[3, 3], pads=[1] * 4,
                          group=c),
             oh.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Conv", ["p", "w2"], ["y"], kernel_shape=[1, 1])]
    params = weights(1, w0=(c, c_in, 3, 3), w1=(c, 1, 3, 3), w2=(8, c, 1, 1))
    params |= {"lo": np.array(0, "float32"), "hi": np.array(6, "float32")}
    return onnx_model(nodes, {"x": [1, c_in, 10, 10]}, ("y", [1, 8, 5, 5]), params)


def _ops(mod: tvm.IRModule) -> list[str]:
    names = []

    def visit(expr):
        if isinstance(expr, relax.Call):
            op = expr.op
            names.append(op.name if isinstance(op, tvm.ir.Op) else getattr(op, "name_hint", ""))
            if op == tvm.ir.Op.get("relax.call_tir"):
                names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def test_layout_pass_blocks_whole_vector_convs(avx2_target):
    """The stem (3 input channels) reads NCHW and writes NCHWc itself, its ReLU6 follows;
    the depthwise and 1x1 convs are NCHWc kernels with pre-packed weights; ReLU6 is Relax ops
    again, no call_tir of maximum; the one transform left is the model's output."""
    mod = tc.load(chain()).mod
    with avx2_target:
        out = tvm.transform.Sequential(layout_passes(avx2_target))(mod)
    ops = _ops(out)
    assert sum(o.startswith("conv2d_nchwc") for o in ops) == 3
    assert ops.count("relax.nn.conv2d") + sum(o.startswith("conv2d_packed") for o in ops) == 0
    assert "relax.minimum" in ops and not any(o.startswith("minimum") for o in ops)
    assert ops.count("relax.layout_transform") == 1  # back out of the block layout


def stem_residual(second_reader: bool = False) -> tc.Model:
    """ResNet-style stem: conv 3 -> 16 with bias -> ReLU -> MaxPool 3x3/2 -> depthwise conv
    -> + the pooled map (residual) -> per-channel scale. With ``second_reader`` the stem's
    ReLU output is also added to the model's output (upsampled by a strided slice of it)."""
    nodes = [oh.make_node("Conv", ["x", "w0", "b0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4,
                          strides=[2, 2]),
             oh.make_node("Relu", ["a"], ["r"]),
             oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1] * 4),
             oh.make_node("Conv", ["p", "w1"], ["d"], kernel_shape=[3, 3], pads=[1] * 4,
                          group=16),
             oh.make_node("Add", ["d", "p"], ["s"]),
             oh.make_node("Mul", ["s", "scale"], ["y0" if second_reader else "y"])]
    if second_reader:
        nodes += [oh.make_node("MaxPool", ["r"], ["q"], kernel_shape=[2, 2], strides=[2, 2]),
                  oh.make_node("Add", ["y0", "q"], ["y"])]
    params = weights(3, w0=(16, 3, 3, 3), b0=(16,), w1=(16, 1, 3, 3), scale=(1, 16, 1, 1))
    return onnx_model(nodes, {"x": [1, 3, 24, 24]}, ("y", [1, 16, 6, 6]), params)


def test_stem_writes_blocked_output_through_its_tail(host_target):
    """conv -> bias -> ReLU -> max-pool all run in NCHWc: no transform of the stem's map, and
    the residual and per-channel scale match unscheduled TVM."""
    model = stem_residual()
    with host_target:
        ops = _ops(nchwc.to_nchwc(host_target)(tc.load(model).mod))
    assert sum(o.startswith("conv2d_nchwc") for o in ops) == 2
    assert ops.count("relax.layout_transform") == 1 and "relax.nn.conv2d" not in ops
    assert_parity(model)


def test_stem_read_twice_keeps_its_layout(host_target):
    """A second reader of the stem's NCHW map: moving the stem would compute it twice, so
    it stays NCHW with a transform, and the outputs still match."""
    model = stem_residual(second_reader=True)
    with host_target:
        ops = _ops(nchwc.to_nchwc(host_target)(tc.load(model).mod))
    assert ops.count("relax.nn.conv2d") == 1
    assert_parity(model)


def test_layout_pass_leaves_unaligned_convs(host_target):
    """Channel counts that are not multiples of the vector: no NCHWc conv at all."""
    with host_target:
        out = nchwc.to_nchwc(host_target)(tc.load(chain(c_in=3, c=6)).mod)
    ops = _ops(out)
    assert not any(o.startswith("conv2d_nchwc") for o in ops)
    assert ops.count("relax.nn.conv2d") == 3


@pytest.mark.parametrize("c_in", [3, 8])
def test_chain_parity(c_in):
    assert_parity(chain(c_in=c_in, c=16))


def test_bool_mask_between_convs_follows_the_layout():
    """A mask between blocked convs (``where(a > 0.1, a, 0)``) moves with the layout; TVM's
    legalization alone pads bool transforms with a float and fails to build."""
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("Greater", ["a", "t"], ["m"]),
             oh.make_node("Where", ["m", "a", "zero"], ["b"]),
             oh.make_node("Conv", ["b", "w1"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
    params = weights(2, w0=(16, 8, 3, 3), w1=(8, 16, 3, 3))
    params |= {"t": np.array(0.1, "float32"), "zero": np.array(0, "float32")}
    model = onnx_model(nodes, {"x": [1, 8, 12, 12]}, ("y", [1, 8, 12, 12]), params)
    target = resolve_target(CPU).tvm_target
    with target:
        ops = _ops(nchwc.to_nchwc(target)(tc.load(model).mod))
    assert sum(o.startswith("conv2d_nchwc") for o in ops) == 2
    assert_parity(model, target=CPU)


@pytest.mark.parametrize("preset, width", [("raspberry-pi-4", 4), ("aarch64", 4)])
def test_block_width_is_the_vector(preset, width):
    """NEON: 4-lane blocks; the chain builds with every kernel scheduled."""
    target = resolve_target(preset).tvm_target
    assert nchwc.block_width(target) == width
    compiled = tc.compile(chain(), target=preset)
    assert compiled.build_info.unscheduled == []


@pytest.mark.parametrize("width, dense, expected", [
    (7, True, (7, 1)), (14, True, (7, 1)), (56, True, (4, 2)), (56, False, (14, 1)),
    (7, False, (7, 1))])
def test_tile_sizes_avx2(width, dense, expected):
    """AVX2 (16 registers): rows divide the width (no tail), enough accumulators to cover
    the FMA latency; depthwise/pool take the most rows."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "znver3"})
    assert tile_sizes(32, width, dense, target) == expected


def test_tile_sizes_three_vectors_when_channels_allow():
    """12 channel blocks (MobileNetV2's 96): 4 x 3 tiles, 12 accumulators, on 112/56/28-wide
    maps, and on a 14-wide map too, with a guarded tail of 2 rows (its divisors give 3
    vectors only 2 rows); a 7-wide map keeps 7 x 1 (half its tiles would be tails)."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "znver3"})
    assert [tile_sizes(12, w, True, target) for w in (112, 56, 28, 14, 7)] == [
        (4, 3), (4, 3), (4, 3), (4, 3), (7, 1)]


@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 2)])
def test_tile_with_a_tail_parity(kernel, stride):
    """Convs whose 14-wide output takes the 4 x 3 tile with a 2-row tail (a 1x1 conv, and a
    strided 3x3 one) + bias + ReLU6 match unscheduled TVM; the tile stays a stack buffer (the
    one workspace the 3x3 conv allocates is its padded input)."""
    size = 14 * stride
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["a"], kernel_shape=[kernel] * 2,
                          strides=[stride] * 2, pads=[kernel // 2] * 4),
             oh.make_node("Clip", ["a", "lo", "hi"], ["y"])]
    params = weights(3, w=(96, 32, kernel, kernel), b=(96,))
    params |= {"lo": np.array(0, "float32"), "hi": np.array(6, "float32")}
    compiled = assert_parity(onnx_model(nodes, {"x": [1, 32, size, size]},
                                        ("y", [1, 96, 14, 14]), params), target=CPU)
    asm = "".join(m.inspect_source("asm") for m in compiled.executable.mod.imports)
    assert asm.count("__TVMBackendAllocWorkspace@GOTPCREL") == (kernel > 1)


def test_expand_conv_parity_and_register_tile():
    """A 1x1 expand conv (8 -> 24 channels: 3 blocks, 4 x 3 tiles) + bias + ReLU6 on a
    28-wide map matches unscheduled TVM, and its accumulator tile is a stack buffer: no
    ``TVMBackendAllocWorkspace`` call per tile, which kept the tile out of registers."""
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["a"], kernel_shape=[1, 1]),
             oh.make_node("Clip", ["a", "lo", "hi"], ["y"])]
    params = weights(2, w=(24, 8, 1, 1), b=(24,))
    params |= {"lo": np.array(0, "float32"), "hi": np.array(6, "float32")}
    compiled = assert_parity(onnx_model(nodes, {"x": [1, 8, 28, 28]}, ("y", [1, 24, 28, 28]),
                                        params))
    asm = "".join(m.inspect_source("asm") for m in compiled.executable.mod.imports)
    assert "vfmadd" in asm
    assert "TVMBackendAllocWorkspace" not in asm


def test_layout_transform_fuses_with_injective_neighbours(host_target):
    """NCHW8c -> NCHW -> [N, C/4, H, W, 4] (what sits between an NCHWc kernel and an int8
    conv) is one kernel, not a transform kernel and then a reshape/transpose kernel, and it
    moves the bytes exactly (TVM's pattern analysis calls a layout_transform opaque)."""
    x = relax.Var("x", relax.TensorType((1, 3, 5, 7, 8), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.layout_transform(x, lambda n, c, h, w, v: (n, c * 8 + v, h, w)))
            y = bb.emit(relax.op.reshape(y, (1, 6, 4, 5, 7)))
            out = bb.emit_output(relax.op.permute_dims(y, [0, 1, 3, 4, 2]))
        bb.emit_func_output(out)
    with host_target:
        fused = tvm.transform.Sequential(build_module.fusion_passes(host_target))(bb.get())
    kernels = [gv.name_hint for gv, f in fused.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels == ["fused_te_layout_transform_reshape_transpose"]
    data = np.random.default_rng(0).integers(0, 256, (1, 3, 5, 7, 8), dtype=np.uint8)
    executable, info = build_module.build(bb.get(), resolve_target("host"))
    assert info.unscheduled == []
    expected = data.transpose(0, 1, 4, 2, 3).reshape(1, 6, 4, 5, 7).transpose(0, 1, 3, 4, 2)
    np.testing.assert_array_equal(run(executable, [data]), expected)


def test_quantize_dequantize_follow_the_blocked_layout(host_target):
    """The QuantizeLinear/DequantizeLinear a pre-quantized model keeps around layers it could
    not fold (per tensor and per channel) become the element-wise ops TVM legalizes them to,
    so they run in NCHWc: transforms only at the entry and the exit, where each had one on
    both sides; outputs bit-identical (integer-valued data: every conv sum is exact)."""
    rng = np.random.default_rng(7)
    w0, w1 = (rng.integers(-2, 3, s).astype("float32") for s in ((16, 16, 3, 3), (16, 16, 1, 1)))
    scales = rng.choice([0.25, 0.5, 1.0], 16).astype("float32")

    def qdq(bb, t, scale, zero, dtype):
        q = bb.emit(relax.op.quantize(t, scale, zero, axis=1, out_dtype=dtype))
        return bb.emit(relax.op.dequantize(q, scale, zero, axis=1))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.nn.conv2d(x, relax.const(w0), padding=1))
            t = qdq(bb, t, relax.const(0.5, "float32"), relax.const(3, "int8"), "int8")
            t = bb.emit(relax.op.nn.conv2d(t, relax.const(w1)))
            out = bb.emit_output(qdq(bb, t, relax.const(scales),
                                     relax.const(np.full(16, 100, "uint8")), "uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    with host_target:
        ops = _ops(nchwc.to_nchwc(host_target)(mod))
    assert "relax.quantize" not in ops and "relax.dequantize" not in ops
    assert ops.count("relax.layout_transform") == 2, ops
    data = rng.integers(-3, 4, (1, 16, 6, 6)).astype("float32")
    executable, info = build_module.build(mod, resolve_target("host"))
    assert info.unscheduled == []
    expected = run(unscheduled_build(mod, host_target), [data])
    np.testing.assert_array_equal(run(executable, [data]), expected)
    assert len(np.unique(expected)) > 20  # the clip did not flatten everything


def _upsampling(c: int = 16) -> onnx.ModelProto:
    """conv 3x3 (c -> c, NCHWc) -> ConvTranspose 2x2 stride 2 (a U-Net's upsampling)."""
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("ConvTranspose", ["a", "w1"], ["y"], kernel_shape=[2, 2],
                          strides=[2, 2])]
    params = weights(3, w0=(c, c, 3, 3), w1=(c, 8, 2, 2))
    return onnx_model(nodes, {"x": [1, c, 6, 6]}, ("y", [1, 8, 12, 12]), params)


def test_transposed_conv_reads_plain_layout(host_target, caplog):
    """A transposed conv after a blocked conv: TVM's layout rule failed on its blocked input
    ("Layouts must have the same size"), which failed the compile; it now reads NCHW and the
    conv before it stays blocked."""
    with caplog.at_level("WARNING"):
        compiled = assert_parity(_upsampling())
    assert not [r for r in caplog.records if "layout failed" in r.getMessage()]
    with host_target:
        ops = _ops(nchwc.to_nchwc(host_target)(tc.load(_upsampling()).mod))
    assert any(o.startswith("conv2d_nchwc") for o in ops) and "relax.nn.conv2d_transpose" in ops
    assert compiled.build_info.unscheduled == []


def test_layout_failure_keeps_nchw(monkeypatch, caplog):
    """If TVM cannot carry a model through the NCHWc change (injected here into our own
    rewrite), the model compiles in NCHW with a warning that names the failure, and its
    outputs still match onnxruntime."""
    from tvmcompress import reference

    real = nchwc._rewrite

    def failing(mod, mode, *args):
        if mode == "sink":
            raise RuntimeError("Check failed: injected layout failure")
        return real(mod, mode, *args)

    monkeypatch.setattr(nchwc, "_rewrite", failing)
    model = chain(c_in=16)
    with caplog.at_level("WARNING"):
        compiled = tc.compile(model)
    assert any("injected layout failure" in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(0).standard_normal((1, 16, 10, 10)).astype("float32")
    (got,) = compiled.run([x]).values()
    np.testing.assert_allclose(got, reference.ort_run(model, {"x": x})["y"],
                               rtol=1e-4, atol=1e-4)


def test_attention_map_and_negative_squeeze_stay_blocked(caplog):
    """Two graphs TVM's layout rules failed on, which sent the whole model to NCHW: a spatial
    attention map (the channel mean, keepdims, times the features: "Cannot broadcast from 5
    to 4") and a classifier that squeezes the pooled map with negative axes (the new torch
    exporter's ``squeeze(-1)``: std::bad_alloc). Both now keep the convs blocked, with no
    fallback warning, and match unscheduled TVM."""
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("ReduceMean", ["a"], ["m"], axes=[1], keepdims=1),
             oh.make_node("Mul", ["a", "m"], ["b"]),
             oh.make_node("Conv", ["b", "w1"], ["c"], kernel_shape=[1, 1]),
             oh.make_node("GlobalAveragePool", ["c"], ["p"]),
             oh.make_node("Squeeze", ["p", "last"], ["q"]),
             oh.make_node("Squeeze", ["q", "last"], ["y"])]
    params = weights(4, w0=(16, 8, 3, 3), w1=(16, 16, 1, 1)) | {"last": np.array([-1])}
    model = onnx_model(nodes, {"x": [2, 8, 6, 6]}, ("y", [2, 16]), params)
    with caplog.at_level("WARNING"):
        compiled = assert_parity(model, target=CPU)
    assert not [r for r in caplog.records if "layout failed" in r.getMessage()]
    kernels = list(compiled.build_info.flops)
    assert sum("conv2d_nchwc" in k for k in kernels) == 2, kernels
    # the map's broadcast over the channels is fused into the multiply, never materialized
    assert all("multiply" in k for k in kernels if "broadcast_to" in k), kernels


def _scheduled(compiled: tc.CompiledModel, target, part: str) -> dict[str, s_tir.Schedule]:
    """Our Conv2d rule's schedule of each fused function whose name holds ``part``."""
    funcs = {gv.name_hint: f for gv, f in fused(compiled.ir, target).functions.items()
             if part in gv.name_hint}
    return {name: Conv2d().apply(f, target, False) for name, f in funcs.items()}


def _window_blocks(sch: s_tir.Schedule) -> tuple[list[bool], bool]:
    """(whether each reduction update block tests bounds, whether a padding block runs
    inside a parallel loop)."""
    tests = [bool(_HAS_IF(b)) for b in _collect(sch.mod["main"].body, _named("_update"))]
    loops = _collect(sch.mod["main"].body, lambda s: isinstance(s, tvm.tirx.For)
                     and s.kind == tvm.tirx.ForKind.PARALLEL)
    return tests, any(_collect(loop.body, lambda s: isinstance(s, s_tir.SBlock)
                               and s.name_hint.startswith("pad_temp")) for loop in loops)


def _named(suffix: str):
    return lambda s: isinstance(s, s_tir.SBlock) and s.name_hint.endswith(suffix)


def _collect(stmt, keep) -> list:
    found = []
    tvm_ffi.structural_walk(stmt, lambda s: found.append(s) if keep(s) else None)
    return found


def test_stride1_windows_read_banded_copies(avx2_target):
    """Stride-1 depthwise convs (3x3 and 5x5) and 3x3 max and average pools (the average
    over the pixels inside the map) on 28-wide maps copy the
    padded rows of each band inside the parallel loop and run without bounds tests (those
    cost up to 2x); stride-2 windows and a 7-wide map keep the bounds tests (a copy costs
    more there). Batch 2 and two channel blocks give several bands per map; every kernel
    matches unscheduled TVM."""
    def dw(src, dst, k, stride, w):
        return oh.make_node("Conv", [src, w], [dst], kernel_shape=[k, k], strides=[stride] * 2,
                            pads=[k // 2] * 4, group=16)

    nodes = [dw("x", "a", 3, 1, "w0"), oh.make_node("Clip", ["a", "lo", "hi"], ["b"]),
             oh.make_node("MaxPool", ["b"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
             oh.make_node("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], pads=[1] * 4),
             dw("q", "c", 5, 1, "w1"), dw("c", "d", 3, 2, "w2"), dw("d", "e", 3, 2, "w3"),
             dw("e", "y", 3, 1, "w4")]
    params = weights(5, w0=(16, 1, 3, 3), w1=(16, 1, 5, 5), w2=(16, 1, 3, 3),
                     w3=(16, 1, 3, 3), w4=(16, 1, 3, 3))
    params |= {"lo": np.array(0, "float32"), "hi": np.array(6, "float32")}
    compiled = assert_parity(onnx_model(nodes, {"x": [2, 16, 28, 28]}, ("y", [2, 16, 7, 7]),
                                        params), target=CPU)
    kernels = {name: _window_blocks(sch) for part in ("conv2d", "pool")
               for name, sch in _scheduled(compiled, avx2_target, part).items()}
    banded = [name for name, (tests, in_parallel) in kernels.items()
              if in_parallel and tests and not any(tests)]
    tested = [name for name, (tests, _) in kernels.items() if tests and all(tests)]
    assert len(kernels) == 7 and len(banded) == 4 and len(tested) == 3, kernels


@pytest.mark.parametrize("kernel, stride, bias, residual", [
    (1, 1, True, False), (1, 1, False, False), (1, 1, True, True), (1, 2, True, False),
    (3, 1, True, False), (3, 2, False, True)])
def test_dense_conv_tiles_pixels(kernel, stride, bias, residual, host_target):
    """Dense NCHWc convs onto a 7x7 map tile its 49 pixels as one axis (a 4 x 3 tile whose
    pixels span rows, with a guarded tail, instead of 7 x 1): the accumulator buffer is
    indexed [n, c, pixel, lane]. 1x1 and 3x3 convs, strided or not, with a bias + ReLU, with
    no epilogue at all (a write-back stage), with a residual add on a batch of 2; all match
    unscheduled TVM."""
    size = 7 * stride
    nodes = [oh.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["a"],
                          kernel_shape=[kernel] * 2, strides=[stride] * 2,
                          pads=[kernel // 2] * 4)]
    channels, batch = (24, 2) if residual else (16, 1)
    params = weights(6, w=(24, channels, kernel, kernel), b=(24,))
    if residual:
        nodes += [oh.make_node("AveragePool", ["x"], ["s"], kernel_shape=[stride] * 2,
                               strides=[stride] * 2),
                  oh.make_node("Add", ["a", "s"], ["y"])]
    else:
        nodes.append(oh.make_node("Relu" if bias else "Identity", ["a"], ["y"]))
    if not bias:
        del params["b"]
    compiled = assert_parity(onnx_model(nodes, {"x": [batch, channels, size, size]},
                                        ("y", [batch, 24, 7, 7]), params))
    convs = [sch for name, sch in _scheduled(compiled, host_target, "conv2d").items()
             if "pool" not in name]
    (sch,) = convs
    ranks = {len(w.source.ty.shape) for block in _collect(sch.mod["main"].body, _named("_update"))
             for w in block.writes}
    assert ranks == {4}
