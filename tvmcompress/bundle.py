"""Make an export directory deployable from C++: runtime libraries, headers, sources, README.

``add_deploy_files`` adds to an export (``model.so`` + ``manifest.json``)::

    lib/        libtvm_runtime.so, libtvm_ffi.so (+ libtvm_runtime_cuda.so for CUDA) for the
                target's architecture: from the installed packages when it is this machine's,
                else from the apache-tvm / apache-tvm-ffi manylinux wheels (downloaded once)
    include/    the tvm_ffi headers (with dlpack) and tvmcompress.hpp
    main.cpp, CMakeLists.txt (+ toolchain-<arch>.cmake for cross builds), README.md
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from tvmcompress.errors import ExportError

CPP_DIR = Path(__file__).parent / "cpp"
HEADER = "tvmcompress.hpp"
SOURCES = ("main.cpp", "CMakeLists.txt")
CUDA_RUNTIME = "libtvm_runtime_cuda.so"
# Library file -> (distribution, path inside its wheel / installed package).
_LIBS = {
    "libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
    CUDA_RUNTIME: ("apache-tvm", "tvm/lib/libtvm_runtime_cuda.so"),
    "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
}
# Architectures with manylinux wheels of apache-tvm and apache-tvm-ffi, and their ELF e_machine.
_WHEEL_ARCHES = {"x86_64": 62, "aarch64": 183}
_MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24")


def add_deploy_files(staging_dir: Path, preset: Any, manifest: dict[str, Any]) -> None:
    """Add ``lib/``, ``include/``, the C++ runner sources and a README to an export directory.

    Raises ExportError when the runtime libraries for the target's architecture cannot be found
    or downloaded (the message names the command to run by hand).
    """
    staging_dir = Path(staging_dir)
    arch = manifest.get("arch") or preset.arch
    cuda = manifest.get("device") == "cuda"
    if arch in _WHEEL_ARCHES:
        lib = staging_dir / "lib"
        lib.mkdir(exist_ok=True)
        for name, path in runtime_libraries(arch, cuda).items():
            shutil.copy2(path, lib / name)
    include = staging_dir / "include"
    ffi_include = _package_dir("tvm_ffi") / "include"
    for sub in ("tvm", "dlpack"):
        shutil.copytree(ffi_include / sub, include / sub, dirs_exist_ok=True)
    shutil.copy2(CPP_DIR / HEADER, include / HEADER)
    for name in SOURCES:
        shutil.copy2(CPP_DIR / name, staging_dir / name)
    toolchain = CPP_DIR / f"toolchain-{arch}.cmake"
    if toolchain.is_file():
        shutil.copy2(toolchain, staging_dir / toolchain.name)
    (staging_dir / "README.md").write_text(_readme(preset, manifest, arch, cuda))


def runtime_libraries(arch: str, cuda: bool = False) -> dict[str, Path]:
    """Paths of the TVM runtime libraries (by file name) built for ``arch``: from the installed
    packages for this machine's architecture, else from the wheels in the download cache."""
    from tvmcompress.targets.presets import host_arch

    if arch not in _WHEEL_ARCHES:
        raise ExportError(f"No TVM runtime wheel exists for {arch}; build the runtime on the board")
    if arch == host_arch():
        libs = {name: _package_dir(member.split("/")[0]) / member.split("/", 1)[1]
                for name, (_, member) in _LIBS.items()}
    else:
        libs = _cached_libraries(arch)
    libs = {name: path for name, path in libs.items() if cuda or name != CUDA_RUNTIME}
    for path in libs.values():
        _check_elf(path, arch)
    return libs


def cache_dir() -> Path:
    """Root of tvmcompress's download cache (``$TVMCOMPRESS_CACHE`` or ~/.cache/tvmcompress)."""
    env = os.environ.get("TVMCOMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tvmcompress"


def _versions() -> dict[str, str]:
    return {dist: metadata.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi")}


def _cached_libraries(arch: str) -> dict[str, Path]:
    versions = _versions()
    root = (cache_dir() / "runtime" / arch /
            f"tvm-{versions['apache-tvm']}_ffi-{versions['apache-tvm-ffi']}")
    lib = root / "lib"
    if not all((lib / name).is_file() for name in _LIBS):
        wheels = root / "wheels"
        if not _find_wheels(wheels, versions, arch):
            _download(wheels, versions, arch)
        found = _find_wheels(wheels, versions, arch)
        if not found:
            raise ExportError(f"No {arch} wheels of {versions} in {wheels}; run by hand:\n  "
                              + _download_command(wheels, versions, arch, shell=True))
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".lib-", dir=root))
        for name, (dist, member) in _LIBS.items():
            with zipfile.ZipFile(found[dist]) as whl, whl.open(member) as src, \
                    open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            (tmp / name).chmod(0o755)
        shutil.rmtree(lib, ignore_errors=True)
        try:
            tmp.rename(lib)
        except OSError:  # another process extracted them first
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(wheels, ignore_errors=True)  # ~100 MB; only the libraries are kept
    return {name: lib / name for name in _LIBS}


def _find_wheels(directory: Path, versions: dict[str, str], arch: str) -> dict[str, Path]:
    found = {}
    for dist, version in versions.items():
        prefix = f"{dist.replace('-', '_')}-{version}-"
        matches = sorted(p for p in directory.glob(f"{prefix}*{arch}*.whl"))
        if matches:
            found[dist] = matches[0]
    return found if len(found) == len(versions) else {}


def _download_command(dest: Path, versions: dict[str, str], arch: str,
                      shell: bool = False) -> list[str] | str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    for tag in _MANYLINUX:
        cmd += ["--platform", f"{tag}_{arch}"]
    cmd += ["--python-version", "3.11", "-d", str(dest)]
    cmd += [f"{dist}=={version}" for dist, version in versions.items()]
    return " ".join(cmd) if shell else cmd


def _download(dest: Path, versions: dict[str, str], arch: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = _download_command(dest, versions, arch)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        error = proc.stderr.strip().splitlines()[-1:] if proc.returncode else None
    except (OSError, subprocess.TimeoutExpired) as err:
        error = [str(err)]
    if error is not None:
        raise ExportError(
            f"Could not download the {arch} TVM runtime wheels ({error[0] if error else '?'}). "
            f"Run this by hand (with network access), then export again:\n  "
            + _download_command(dest, versions, arch, shell=True))


def _package_dir(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _check_elf(path: Path, arch: str) -> None:
    try:
        head = path.read_bytes()[:20]
    except OSError as err:
        raise ExportError(f"TVM runtime library {path} is missing: {err}") from err
    machine = int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None
    if machine != _WHEEL_ARCHES[arch]:
        raise ExportError(f"{path} is not an {arch} shared library (ELF machine {machine}); "
                          f"delete it and export again")


def _readme(preset: Any, manifest: dict[str, Any], arch: str, cuda: bool) -> str:
    def spec(t: dict[str, Any]) -> str:
        return f"`{t['name']}`: {t['dtype']}{list(t['shape'])}"

    name = manifest.get("preset") or getattr(preset, "name", "?")
    versions = _versions()
    lines = [
        f"# tvmcompress bundle for `{name}`", "",
        f"Model {manifest.get('source', '?')}; architecture {arch}, device "
        f"{manifest.get('device', 'cpu')}; apache-tvm {versions['apache-tvm']}, "
        f"apache-tvm-ffi {versions['apache-tvm-ffi']}.", "",
        "Inputs: " + ", ".join(spec(t) for t in manifest.get("inputs", [])) + ".  ",
        "Outputs: " + ", ".join(spec(t) for t in manifest.get("outputs", [])) + ".", "",
        "| file | what |", "|---|---|",
        "| `model.so`, `manifest.json` | the compiled model and its signature |",
        *(["| `weights.params` | the weights (exported separately; loaded by the runtimes) |"]
          if manifest.get("weights") else []),
        "| `lib/` | TVM runtime: `libtvm_runtime.so`, `libtvm_ffi.so`"
        + (f", `{CUDA_RUNTIME}`" if cuda else "") + " |",
        "| `include/` | `tvmcompress.hpp` (C++17 API) and the tvm_ffi headers |",
        "| `main.cpp`, `CMakeLists.txt` | `tvmcompress_run`: raw `.bin` inputs in, outputs out |",
        "",
    ]
    if arch not in _WHEEL_ARCHES:
        lines += [
            "## No runtime for this architecture yet", "",
            f"No {'Armv7' if arch == 'armv7' else arch} TVM runtime wheel exists: apache-tvm "
            "and apache-tvm-ffi publish Linux wheels for x86_64 and aarch64 only, so `lib/` is "
            "empty. `model.so` is ready; build the two runtime libraries on the board (or with a "
            "cross compiler) and put them in `lib/`:", "",
            f"1. `libtvm_ffi.so` (apache-tvm-ffi {versions['apache-tvm-ffi']}): from the sources "
            "inside the apache-tvm-ffi wheel (`tvm_ffi/CMakeLists.txt`, `tvm_ffi/src`); needs "
            "CMake >= 3.26 (`pip install cmake`), a few minutes.",
            f"2. `libtvm_runtime.so` (apache-tvm {versions['apache-tvm']}): the apache-tvm wheel "
            "cannot build it (no CMakeLists.txt, support headers missing, and PyPI has no sdist): "
            "use the Apache TVM source tree of the same version (github.com/apache/tvm, "
            "v0.27 release, with submodules), configure with `-DUSE_LLVM=OFF` and build the "
            "`runtime` target.", "",
            "Then build and run as below.", "",
        ]
    lines += [
        "## Build and run on the board", "",
        "Needs a C++17 compiler and CMake >= 3.13 (`sudo apt-get install g++ cmake`).", "",
        "```sh", "cmake -S . -B build", "cmake --build build -j",
        "./build/tvmcompress_run . --out out            # deterministic inputs",
        "./build/tvmcompress_run . --out out x.bin      # one raw .bin per input, in order",
        "./build/tvmcompress_run . --repeat 50          # also print the median latency",
        "```", "",
        "Inputs and outputs are raw little-endian C-order arrays (`numpy.tofile` / "
        "`numpy.fromfile(path, dtype).reshape(shape)`); each output goes to `out/<name>.bin`. "
        "The runner finds `lib/` through its RPATH (`$ORIGIN/lib`, `$ORIGIN/../lib`); "
        "`cmake --install build --prefix .` puts it next to `lib/`.", "",
    ]
    if arch in _WHEEL_ARCHES:
        lines += [f"The runtime libraries come from the manylinux {arch} wheels: the board needs "
                  "glibc >= 2.27 (Debian 10+, Ubuntu 18.04+, 64-bit Raspberry Pi OS).", ""]
    if arch != "x86_64" and (CPP_DIR / f"toolchain-{arch}.cmake").is_file():
        lines += ["Or cross-build on an x86-64 Debian/Ubuntu machine "
                  f"(`apt-get install g++-{arch}-linux-gnu cmake`, and `qemu-user` to try it); "
                  "the binary then needs a board glibc at least as new as the cross "
                  "toolchain's:", "",
                  "```sh", f"cmake -S . -B build-{arch} "
                  f"-DCMAKE_TOOLCHAIN_FILE=$PWD/toolchain-{arch}.cmake",
                  f"cmake --build build-{arch} -j",
                  f"qemu-{arch} -L /usr/{arch}-linux-gnu ./build-{arch}/tvmcompress_run . "
                  "--out out",
                  "```", ""]
    if cuda:
        lines += _cuda_readme(preset, manifest)
    lines += [
        "## C++ API (`include/tvmcompress.hpp`)", "",
        "```cpp", '#include "tvmcompress.hpp"', "",
        'tvmcompress::Model model("path/to/bundle");           // throws tvmcompress::Error',
        "std::vector<float> x(model.inputs()[0].numel());",
        "auto outputs = model.run({tvmcompress::Input::of(x)});  // checks count, size, dtype",
        "const float* y = outputs[0].as<float>();              // outputs[0].info: name, shape",
        "```", "",
        "Link with `lib/libtvm_runtime.so` and `lib/libtvm_ffi.so` (see `CMakeLists.txt`; keep "
        "`-Wl,--no-as-needed` for libtvm_runtime).", "",
    ]
    return "\n".join(lines)


def _cuda_readme(preset: Any, manifest: dict[str, Any]) -> list[str]:
    info = manifest.get("cuda") or {}
    major = info.get("runtime_major") or getattr(preset, "cuda_major", None) or 13
    code = ", ".join(info.get("device_code") or []) or f"SASS for {info.get('arch', '?')}"
    return ["## CUDA", "",
            f"`model.so` holds the kernels as {code} (compiled by nvcc {info.get('nvcc', '?')}): "
            f"it runs on that GPU generation only. `lib/{CUDA_RUNTIME}` links the CUDA {major} "
            f"runtime (`libcudart.so.{major}`) and the NVIDIA driver (`libcuda.so.1`): the "
            f"target needs CUDA {major} (or just its runtime library) and a driver that supports "
            f"it. JetPack 6 ships CUDA 12, which does not satisfy it: on a Jetson install CUDA "
            f"{major} for Jetson or build TVM's runtime against JetPack's CUDA.", "",
            f"`tvmcompress.hpp` loads `lib/{CUDA_RUNTIME}` and runs the model on a GPU "
            "(`tvmcompress_run . --device cuda --device-id 0`) with the host CPU for shape "
            "functions; inputs are copied from host memory and outputs back to it.", ""]
