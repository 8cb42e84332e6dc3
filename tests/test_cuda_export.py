"""CUDA exports built on this GPU-less machine hold real device code (SASS) for the preset's GPU.

Needs nvcc (CUDA 13 toolkit) and g++-aarch64-linux-gnu for jetson-orin; CI has both. The
device code is checked two ways: the fatbin headers (what tvmcompress checks at compile time)
and the cubin's ELF header, compared with a cubin nvcc builds here for the same arch.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

import tvmcompress as tc
from tvmcompress import cuda, zoo
from tvmcompress.errors import ExportError

PRESETS = {"cuda-sm86": 86, "cuda-sm90": 90, "jetson-orin": 87}
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda")
    model = tc.load(zoo.build("mlp", 1), input_shapes={"x": [1, *zoo.ZOO["mlp"][1]]})
    return {name: tc.compile(model, name).export(root / name) for name in PRESETS}


def _cubins(blob: bytes) -> list[bytes]:
    """The ELF payloads of every fatbin in ``blob`` (uncompressed entries)."""
    out, start = [], blob.find(cuda.FATBIN_MAGIC)
    while start >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", blob, start)
        pos, end = start + header, start + header + size
        while pos < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", blob, pos)
            if kind == 2:
                out.append(blob[pos + entry_header:pos + entry_header + payload])
            pos += entry_header + payload
        start = blob.find(cuda.FATBIN_MAGIC, end)
    return out


def _nvcc_cubin_flags(sm: int, tmp_path: Path) -> int:
    source = tmp_path / "k.cu"
    source.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }\n')
    cubin = tmp_path / f"k{sm}.cubin"
    nvcc = cuda._nvcc()
    assert nvcc, "nvcc (CUDA 13 toolkit) is needed to build CUDA exports"
    subprocess.run([nvcc, "-cubin", f"-arch=sm_{sm}", str(source), "-o", str(cubin)], check=True)
    return struct.unpack_from("<I", cubin.read_bytes(), 48)[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_export_holds_sass_for_the_arch(preset, exports, tmp_path):
    sm = PRESETS[preset]
    blob = (exports[preset] / "model.so").read_bytes()
    assert cuda.device_images(blob) == [cuda.DeviceImage("sass", sm)]
    assert b"__global__" not in blob, "CUDA source was stored instead of device code"
    cubins = _cubins(blob)
    assert len(cubins) == 1 and cubins[0][:4] == b"\x7fELF"
    assert struct.unpack_from("<H", cubins[0], 18)[0] == 190  # EM_CUDA
    flags = struct.unpack_from("<I", cubins[0], 48)[0]
    assert flags == _nvcc_cubin_flags(sm, tmp_path), f"cubin e_flags {flags:#x} are not sm_{sm}'s"
    assert b"fused_matmul" in cubins[0] or b"matmul" in cubins[0]  # the model's kernels


@pytest.mark.parametrize("preset", PRESETS)
def test_manifest_and_readme_state_cuda_needs(preset, exports):
    directory = exports[preset]
    manifest = json.loads((directory / "manifest.json").read_text())
    info = manifest["cuda"]
    assert manifest["device"] == "cuda" and info["arch"] == f"sm_{PRESETS[preset]}"
    assert info["runtime_major"] == 13 and info["device_code"] == [f"SASS sm_{PRESETS[preset]}"]
    assert "JetPack 6 ships CUDA 12" in info["needs"]
    readme = (directory / "README.md").read_text()
    assert "libcudart.so.13" in readme and "JetPack 6 ships CUDA 12" in readme
    assert f"SASS sm_{PRESETS[preset]}" in readme


@pytest.mark.parametrize("preset", PRESETS)
def test_host_code_and_runtime_match_the_board(preset, exports):
    arch = tc.resolve_target(preset).arch
    directory = exports[preset]
    for lib in [directory / "model.so", *sorted((directory / "lib").iterdir())]:
        assert struct.unpack_from("<H", lib.read_bytes(), 18)[0] == ELF_MACHINE[arch], lib
    assert (directory / "lib" / "libtvm_runtime_cuda.so").is_file()
    assert arch == ("aarch64" if preset == "jetson-orin" else "x86_64")


def test_wrong_arch_or_source_only_is_an_error(exports):
    sm86 = (exports["cuda-sm86"] / "model.so").read_bytes()
    with pytest.raises(ExportError, match=r"SASS sm_86, which does not run on sm_90"):
        cuda.check_device_code(sm86, "sm_90", "model.so")
    with pytest.raises(ExportError, match=r"does not run on sm_80"):
        cuda.check_device_code(sm86, "sm_80", "model.so")
    assert cuda.check_device_code(sm86, "sm_87", "model.so")  # same major, newer minor: runs
    source = b'extern "C" __global__ void fused_matmul_kernel(float* x) {}'
    with pytest.raises(ExportError, match="only CUDA source"):
        cuda.check_device_code(source, "sm_86", "model.so")


def test_compile_fails_without_device_code(monkeypatch):
    """The check runs at compile time: a build that yields no device code never exports."""
    monkeypatch.setattr(cuda, "device_images", lambda blob: [])
    with pytest.raises(ExportError, match="holds no CUDA device code"):
        tc.compile(zoo.build("mlp", 1), "cuda-sm86", input_shapes={"x": [1, 64]})


def test_driver_stub_is_a_libcuda(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(cuda, "_nvcc", lambda: None)  # no toolkit stub: build one
    stub = cuda.driver_stub()
    assert stub == tmp_path / "cuda-driver-stub" / "libcuda.so.1"
    out = subprocess.run(["readelf", "-d", "--dyn-syms", str(stub)], capture_output=True,
                         text=True, check=True).stdout
    assert "Library soname: [libcuda.so.1]" in out
    for symbol in ("cuModuleLoadData", "cuLaunchKernelEx", "cuGetErrorString"):
        assert symbol in out
