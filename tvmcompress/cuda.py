"""CUDA device code built on a machine without a GPU, and checked before it ships.

TVM's CUDA codegen emits a binary module only when ``libtvm_runtime_cuda.so`` is loaded; that
library needs the NVIDIA driver (``libcuda.so.1``), so on a GPU-less build machine ``import tvm``
silently skips it and exports carry CUDA *source* that no board can load. Code generation
never calls the driver, so :func:`enable_device_codegen` satisfies that dependency with a driver
stub (NVIDIA's from the CUDA toolkit, else a tiny generated one whose every call fails) and
loads TVM's CUDA runtime; the kernels are then compiled by ``nvcc`` to a fatbin with SASS for the
preset's arch. :func:`check_device_code` reads the fatbin headers back, so an export without
device code for the board's GPU is an error on the build machine, not on the board.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tvmcompress.errors import ExportError, TargetError

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_EM_CUDA = 190
_STUB_SYMBOLS = ("cuInit", "cuDeviceGetName", "cuFuncSetAttribute", "cuLaunchKernelEx",
                 "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                 "cuTensorMapEncodeTiled")
_STUB_SOURCE = """/* libcuda.so.1 stand-in for building CUDA code on machines without a GPU. */
typedef int CUresult;
enum { CUDA_ERROR_STUB_LIBRARY = 34 };
CUresult cuGetErrorName(CUresult e, const char** s) {
  (void)e; *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) {
  (void)e; *s = "tvmcompress libcuda stub: this machine has no NVIDIA driver"; return 0; }
"""


@dataclass(frozen=True)
class DeviceImage:
    """One entry of a fatbin (or a bare cubin): SASS for ``sm``, or PTX for ``compute_<sm>``."""

    kind: str  # "sass" or "ptx"
    sm: int

    def runs_on(self, sm: int) -> bool:
        """CUDA's rules: SASS runs on the same major with an equal or newer minor; PTX is
        compiled by the driver for any equal or newer GPU."""
        if self.kind == "ptx":
            return sm >= self.sm
        return sm // 10 == self.sm // 10 and sm >= self.sm

    def __str__(self) -> str:
        return f"SASS sm_{self.sm}" if self.kind == "sass" else f"PTX compute_{self.sm}"


def sm_of(arch: str) -> int:
    """``"sm_87"`` -> 87 (an ``a``/``f`` suffix is dropped)."""
    digits = arch.removeprefix("sm_").rstrip("af")
    if not digits.isdigit():
        raise TargetError(f"CUDA arch {arch!r} is not of the form sm_<NN> (e.g. sm_87)")
    return int(digits)


def enable_device_codegen() -> None:
    """Load TVM's CUDA runtime library so codegen produces binaries; a no-op once loaded.

    Raises TargetError when the CUDA runtime library cannot load (it needs ``libcudart.so.13``).
    """
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    _load_driver()
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as err:
        raise TargetError(f"Cannot load TVM's CUDA runtime library to build CUDA code: {err}. It "
                          "needs the CUDA 13 runtime (libcudart.so.13): install the CUDA 13 "
                          "toolkit, or `pip install nvidia-cuda-runtime` and add its lib/ to "
                          "LD_LIBRARY_PATH") from err


@contextlib.contextmanager
def device_codegen() -> Iterator[None]:
    """Within this block, TVM compiles CUDA kernels with nvcc to a fatbin (SASS for the target's
    arch). nvcc is used unless ``TVM_CUDA_COMPILE_MODE`` is set: TVM's default, NVRTC, needs the
    ``cuda-bindings`` package."""
    enable_device_codegen()
    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvcc") == "nvcc" and _nvcc() is None:
        raise TargetError("Building CUDA code needs nvcc (CUDA toolkit 13): install it and put "
                          "it on PATH, or set CUDA_HOME")
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    saved = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = saved or "nvcc"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)


def device_images(blob: bytes) -> list[DeviceImage]:
    """The device code in ``blob`` (a library file or TVM's serialized modules): every fatbin
    entry, else bare cubins (what NVRTC produces)."""
    images, start = [], blob.find(FATBIN_MAGIC)
    while start >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", blob, start)
        images += _fatbin_entries(blob, start + header, start + header + size)
        start = blob.find(FATBIN_MAGIC, start + header + size)
    if not images:
        images = [DeviceImage("sass", _cubin_sm(blob, i)) for i in _find_all(blob, b"\x7fELF")
                  if struct.unpack_from("<H", blob, i + 18)[0] == _EM_CUDA]
    return images


def _fatbin_entries(blob: bytes, pos: int, end: int) -> list[DeviceImage]:
    """Fatbin entry headers: kind (1 PTX, 2 ELF), header size, payload size, ..., arch at 28."""
    entries = []
    while pos + 32 <= min(end, len(blob)):
        kind, _, header, payload = struct.unpack_from("<HHIQ", blob, pos)
        if kind not in (1, 2) or header < 32:
            break
        entries.append(DeviceImage("ptx" if kind == 1 else "sass",
                                   struct.unpack_from("<I", blob, pos + 28)[0]))
        pos += header + payload
    return entries


def _cubin_sm(blob: bytes, at: int) -> int:
    flags = struct.unpack_from("<I", blob, at + 48)[0]
    return (flags >> 8) & 0xFF if blob[at + 8] >= 8 else flags & 0xFF  # ELF ABI v8: CUDA 12.8+


def _find_all(blob: bytes, needle: bytes) -> Iterator[int]:
    i = blob.find(needle)
    while i >= 0:
        yield i
        i = blob.find(needle, i + 1)


def check_device_code(blob: bytes, arch: str, what: str) -> list[DeviceImage]:
    """Raise ExportError unless ``blob`` holds device code that runs on ``arch`` (sm_NN)."""
    sm = sm_of(arch)
    images = device_images(blob)
    if not images:
        source = b"__global__" in blob
        raise ExportError(f"{what} holds no CUDA device code"
                          + (" (only CUDA source, which no board can load)" if source else "")
                          + ": TVM's CUDA runtime library or nvcc was not available when it "
                          "was compiled. Compile it again with tvmcompress (which loads them)")
    if not any(image.runs_on(sm) for image in images):
        raise ExportError(f"{what} holds device code for {', '.join(map(str, images))}, which "
                          f"does not run on {arch}: compile for the board's target preset")
    return images


def check_executable(executable, arch: str) -> list[DeviceImage]:
    """Check a built Relax executable's device modules, without writing the library."""
    import tvm_ffi

    pack = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")
    blob = pack(executable.mod).numpy().tobytes()
    return check_device_code(blob, arch, "The compiled model")


def manifest_entry(preset) -> dict:
    """The manifest's ``cuda`` entry: the GPU arch and the CUDA runtime the board needs."""
    major = runtime_cuda_major(preset.arch) or preset.cuda_major
    return {"arch": preset.target["arch"], "runtime_major": major,
            "needs": f"CUDA {major} runtime (libcudart.so.{major}) and an NVIDIA driver for it "
                     "(libcuda.so.1); JetPack 6 ships CUDA 12, which does not satisfy this",
            "nvcc": nvcc_version()}


def runtime_cuda_major(arch: str) -> int | None:
    """The CUDA major version TVM's CUDA runtime library for ``arch`` links against (read from
    its ``libcudart.so.<N>`` dependency), or None when that library is not at hand."""
    import re

    from tvmcompress.bundle import CUDA_RUNTIME, runtime_libraries

    try:
        blob = runtime_libraries(arch, cuda=True)[CUDA_RUNTIME].read_bytes()
    except (ExportError, OSError):
        return None
    found = re.search(rb"libcudart\.so\.(\d+)\x00", blob)
    return int(found.group(1)) if found else None

def nvcc_version() -> str | None:
    """nvcc's release (e.g. "13.0"), or None without nvcc."""
    nvcc = _nvcc()
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    release = out.rsplit("release ", 1)[-1].split(",")[0] if "release " in out else None
    return release


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found = shutil.which("nvcc") or str(Path(home) / "bin" / "nvcc")
    return found if Path(found).is_file() else None


def _load_driver() -> None:
    """Make ``libcuda.so.1`` resolvable: the real driver if it loads, else a stub (same soname,
    loaded globally so the dynamic linker satisfies libtvm_runtime_cuda.so's dependency)."""
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    ctypes.CDLL(str(driver_stub()), mode=ctypes.RTLD_GLOBAL)


def driver_stub() -> Path:
    """NVIDIA's ``libcuda.so`` stub from the CUDA toolkit, else one built once in the cache."""
    nvcc = _nvcc()
    if nvcc is not None:
        home = Path(nvcc).resolve().parent.parent
        for stub in [home / "lib64/stubs/libcuda.so", *home.glob("targets/*/lib/stubs/libcuda.so")]:
            if stub.is_file():
                return stub
    from tvmcompress.bundle import cache_dir

    stub = cache_dir() / "cuda-driver-stub" / "libcuda.so.1"
    if not stub.is_file():
        _build_stub(stub)
    return stub


def _build_stub(path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")
    if cc is None:
        raise TargetError("Building CUDA code on a machine without an NVIDIA driver needs a C "
                          "compiler for a driver stub: apt-get install gcc")
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(f".{os.getpid()}.c")
    body = "".join(f"CUresult {name}(void) {{ return CUDA_ERROR_STUB_LIBRARY; }}\n"
                   for name in _STUB_SYMBOLS)
    source.write_text(_STUB_SOURCE + body)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    proc = subprocess.run([cc, "-x", "c", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1",
                           str(source), "-o", str(tmp)], capture_output=True, text=True)
    source.unlink(missing_ok=True)
    if proc.returncode:
        raise TargetError(f"Could not build the CUDA driver stub with {cc}: {proc.stderr[-500:]}")
    tmp.replace(path)  # atomic: concurrent builds each write their own file first
