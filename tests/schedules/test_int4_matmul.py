"""int4 weight-only matmul kernels (schedules/cpu/int4_matmul.py): outputs against numpy's
dequantize + matmul, the weight layout, and that the kernel is scheduled, vectorized and
parallel rather than left to TVM's default loops."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper as oh
from schedule_helpers import fused, onnx_model

import tvmcompress as tc
from tvmcompress.passes import _int4_matmul as int4
from tvmcompress.passes import _quant_math as qm
from tvmcompress.passes.quantize import QuantizeConfig
from tvmcompress.schedules.cpu.int4_matmul import Int4Matmul, tile_sizes

# Ours and numpy sum the same products in different orders (per group, then scaled).
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _model(m: int, k: int, n: int, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    node = oh.make_node("MatMul", ["x", "w"], ["y"])
    return onnx_model([node], {"x": [m, k]}, ("y", [m, n]), {"w": w}), w


def _reference(x: np.ndarray, w: np.ndarray, group: int, symmetric: bool) -> np.ndarray:
    """numpy: the pass's quantization of W (zero-padded to whole groups), dequantized, x @ W."""
    k = w.shape[0]
    padded = np.pad(w, ((0, -k % group), (0, 0)))
    deq = qm.dequantize_groups_int4(*qm.quantize_groups_int4(padded, group, symmetric), group)
    return x @ deq[:k]


def _compile(m: int, k: int, n: int, group: int = 32, symmetric: bool = False, target="host"):
    model, w = _model(m, k, n)
    cfg = QuantizeConfig(scheme="int4", group_size=group, symmetric=symmetric)
    return tc.compile(model, target, config=tc.CompressConfig([cfg])), w


@pytest.mark.parametrize(("m", "k", "n", "group", "symmetric"), [
    (1, 80, 37, 32, False),     # GEMV, K not a multiple of the group, odd N
    (32, 80, 37, 32, True),     # GEMM, symmetric
    (1, 256, 192, 64, False),   # three panels of 64 columns
    (32, 200, 130, 32, False),  # N padded to whole panels, a partial last group
    (5, 128, 64, 128, True),    # rows not a multiple of the register tile
])
def test_matches_numpy_dequantize_matmul(m, k, n, group, symmetric):
    compiled, w = _compile(m, k, n, group, symmetric)
    assert compiled.build_info.unscheduled == []
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    out = compiled.run({"x": x})["y"]
    np.testing.assert_allclose(out, _reference(x, w, group, symmetric), **TOL)


def test_batch_4096_gemv_is_scheduled_vectorized_parallel(avx2_target):
    """The benchmark's GEMV shape: our rule, 8-lane vectors (AVX2), a parallel panel loop, the
    group's dot product in a per-tile stack buffer (registers)."""
    compiled, w = _compile(1, 4096, 512, target="x86-64-avx2")
    x = np.random.default_rng(2).standard_normal((1, 4096)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], _reference(x, w, 32, False),
                               rtol=1e-3, atol=1e-3)
    (func,) = [f for f in fused(compiled.ir, avx2_target).functions.values()
               if isinstance(f, tvm.tirx.PrimFunc)]
    sch = Int4Matmul().apply(func, avx2_target, False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.vectorized(8)" in text and "T.parallel(" in text
    assert compiled.build_info.unscheduled == []
    # A stack tile (registers), not a "local" one: TVM 0.27 allocates those per tile with
    # TVMBackendAllocWorkspace calls, which serialize threads.
    asm = "".join(m.inspect_source("asm") for m in compiled.executable.mod.imports)
    assert "vfmadd" in asm and "TVMBackendAllocWorkspace" not in asm


def test_tile_sizes_fit_panels_and_registers(avx2_target):
    """Tiles never straddle a 64-column panel; GEMV keeps 8 vectors of accumulators."""
    assert tile_sizes(1, 4096, avx2_target) == (1, 8, 8)
    rows, vecs, lanes = tile_sizes(32, 4096, avx2_target)
    assert rows * vecs <= 12 and int4.INT4_PANEL % (vecs * lanes) == 0
    assert tile_sizes(1, 37, avx2_target) == (1, 1, 1)  # odd N: scalar, still correct


def test_word_layout_roundtrip():
    """uint32 word r of a column holds k = 8r..8r+7, low nibble first; panels pad N."""
    q = np.random.default_rng(3).integers(0, 16, (64, 70)).astype(np.uint8)
    words = int4.words(qm.pack_int4(q))
    assert words.shape == (8, 70) and words.dtype == np.uint32
    unpacked = (words[:, None, :] >> (np.arange(8, dtype=np.uint32) * 4)[None, :, None]) & 15
    np.testing.assert_array_equal(unpacked.reshape(64, 70), q)
    panels = int4.to_panels(words, 64)
    assert panels.shape == (2, 8, 64)
    np.testing.assert_array_equal(panels[1, :, :6], words[:, 64:])
    assert not panels[1, :, 6:].any()


def test_other_kernels_are_not_ours(host_target):
    """A float matmul is left to the fp32 rules."""
    model, _ = _model(4, 64, 32)
    mod = fused(tc.load(model).mod, host_target)
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(Int4Matmul().apply(f, host_target, False) is None for f in funcs)


@pytest.mark.parametrize("preset", ["raspberry-pi-4", "raspberry-pi-5", "x86-64-avx512"])
def test_cross_targets_compile_vectorized(preset):
    """ARM NEON and AVX-512 presets (compile-only): our kernel, 4- or 16-lane float FMAs on
    the nibbles."""
    compiled, _ = _compile(1, 256, 128, target=preset)
    assert compiled.build_info.unscheduled == []
    target = compiled.preset.tvm_target
    (func,) = [f for f in fused(compiled.ir, target).functions.values()
               if isinstance(f, tvm.tirx.PrimFunc)]
    assert Int4Matmul().apply(func, target, False) is not None
    (llvm,) = [m for m in compiled.executable.mod.imports if m.kind == "llvm"]
    lanes = 16 if "avx512" in preset else 4
    assert f"<{lanes} x float>" in llvm.inspect_source("ll")


def test_cuda_compile_is_scheduled():
    """cuda-sm86 (compile-only): the plain dequant-matmul form is scheduled by dlight's GPU
    rules, nothing left to TVM's default."""
    compiled, _ = _compile(1, 256, 128, target="cuda-sm86")
    assert compiled.build_info.unscheduled == []
