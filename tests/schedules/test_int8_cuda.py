"""CUDA int8 (compile-only, no GPU needed): the PTX of a ``cuda-sm86`` static-int8 build holds
``dp4a``. dlight's GPU rules schedule the s8 x s8 -> s32 matmul with 4-byte k steps that nvcc
turns into ``dp4a.s32.s32``, so no tensor intrinsic of ours is needed for it.

Needs nvcc (CUDA 13 toolkit), as tests/test_cuda_export.py does. The device source is taken
from TVM's CUDA compile callback and compiled to PTX here (TVM itself keeps only SASS).
"""

from __future__ import annotations

import importlib
import subprocess

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import helper as oh
from schedule_helpers import onnx_model

import tvmcompress as tc
from tvmcompress import cuda
from tvmcompress.passes.quantize import QuantizeConfig
from tvmcompress.targets import resolve_target

build_module = importlib.import_module("tvmcompress.schedules.build")
CALLBACK = "tvm_callback_cuda_compile"


def _device_source(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[str, list[str]]:
    """(CUDA C source of every kernel, unscheduled kernels) of building ``mod`` for ``target``;
    TVM's compile callback is swapped for one that keeps the source, then restored."""
    import tvm.support.nvcc  # registers the default callback first

    saved, seen = tvm_ffi.get_global_func(CALLBACK), []

    def keep(code, *_):
        seen.append(code)
        return bytearray(b"// source kept by the test")

    tvm_ffi.register_global_func(CALLBACK, keep, override=True)
    try:
        info = build_module.BuildInfo()
        with cuda.device_codegen(), target:  # as schedules/build.py builds CUDA
            tvm.compile(mod, target, relax_pipeline=build_module.relax_pipeline(target, info))
    finally:
        tvm_ffi.register_global_func(CALLBACK, saved, override=True)
    return "\n".join(seen), info.unscheduled


def _ptx(source: str, tmp_path, sm: int = 86) -> str:
    nvcc = cuda._nvcc()
    assert nvcc, "nvcc (CUDA 13 toolkit) is needed for the CUDA PTX checks"
    (tmp_path / "k.cu").write_text(source)
    subprocess.run([nvcc, "-ptx", f"-arch=sm_{sm}", str(tmp_path / "k.cu"), "-o",
                    str(tmp_path / "k.ptx")], check=True, capture_output=True)
    return (tmp_path / "k.ptx").read_text()


@pytest.mark.parametrize("batch", [1, 8])
def test_int8_static_ptx_has_dp4a(batch, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 128)).astype(np.float32)
    model = tc.load(onnx_model([oh.make_node("MatMul", ["x", "w"], ["y"])],
                               {"x": [batch, 256]}, ("y", [batch, 128]), {"w": w}))
    cfg = QuantizeConfig(scheme="int8", activation="int8-sym", calibration={
        "x": rng.standard_normal((8, 256)).astype(np.float32)})
    target = resolve_target("cuda-sm86").tvm_target
    with target:  # the pass sees the target, as tc.compile runs it
        ir = tc.compile(model, "host", config=tc.CompressConfig([cfg])).ir
    source, unscheduled = _device_source(ir, target)
    assert unscheduled == []
    assert "signed char" in source  # the matmul really reads 8-bit operands
    assert "dp4a.s32.s32" in _ptx(source, tmp_path)
