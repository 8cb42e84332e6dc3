"""C++ deployment: bundles with runtime libraries, the C++ runner, x86 and aarch64 (under qemu).

Needs g++, cmake, g++-aarch64-linux-gnu and qemu-user; missing tools fail the tests (CI
installs them). The first run downloads the aarch64 runtime wheels into the tvmcompress cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tvmcompress as tc
from tvmcompress import bundle, zoo
from tvmcompress.errors import ExportError
from tvmcompress.threads import physical_cores

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cpp"
MODELS = ("cnn", "transformer", "resnet")  # resnet: Winograd convs on NEON too
BOARDS = ("raspberry-pi-4", "raspberry-pi-5")
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
TOOLS = {"g++": "g++", "cmake": "cmake", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
         "qemu-aarch64": "qemu-user"}


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install "
                    + " ".join(TOOLS[t] for t in missing))


def _run(cmd: list, timeout: float = 120, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, \
        f"{proc.args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cpp")


@pytest.fixture(scope="session")
def export(workdir):
    """export(model, preset) -> a bundle directory, compiled once per session."""
    cache: dict[tuple[str, str], Path] = {}

    def get(model: str, preset: str) -> Path:
        """``model`` is a zoo name, with ``-int8`` for its int8 static quantization or ``-int4``
        for int4 weight-only."""
        if (model, preset) not in cache:
            name, _, quant = model.partition("-")
            shape = [1, *zoo.ZOO[name][1]]
            config = tc.CompressConfig(passes=[tc.QuantizeConfig(
                scheme="int8", activation="int8-sym",  # the same integer model on every arch
                calibration={"x": np.random.default_rng(3).standard_normal(
                    [8, *shape[1:]]).astype("float32")})]) if quant == "int8" else None
            if quant == "int4":
                config = tc.CompressConfig(passes=[tc.QuantizeConfig(scheme="int4",
                                                                     group_size=32)])
            compiled = tc.compile(zoo.build(name, 1), preset, config=config,
                                  input_shapes={"x": shape})
            directory = compiled.export(workdir / f"{model}-{preset}")
            if not (directory / "lib").is_dir():  # until export() adds the deploy files itself
                bundle.add_deploy_files(directory, compiled.preset, compiled.manifest())
            cache[model, preset] = directory
        return cache[model, preset]

    return get


def _build(source: Path, build_dir: Path, bundle_dir: Path, *extra: str) -> Path:
    _check(_run(["cmake", "-S", source, "-B", build_dir, f"-DTVMCOMPRESS_BUNDLE={bundle_dir}",
                 "-DCMAKE_BUILD_TYPE=Release", *extra]))
    _check(_run(["cmake", "--build", build_dir, "-j2"], timeout=300))
    return build_dir / "tvmcompress_run"


@pytest.fixture(scope="session")
def x86_runner(workdir, export) -> Path:
    """tvmcompress_run built from examples/cpp with g++."""
    _require("g++", "cmake")
    return _build(EXAMPLE, workdir / "build-x86_64", export("cnn", "host"))


@pytest.fixture(scope="session")
def aarch64_runner(workdir, export) -> Path:
    """tvmcompress_run cross-built from a bundle's own CMakeLists.txt and toolchain file."""
    _require("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64")
    source = export("cnn", BOARDS[0])
    return _build(source, workdir / "build-aarch64", source,
                  f"-DCMAKE_TOOLCHAIN_FILE={source / 'toolchain-aarch64.cmake'}")


def _install(runner: Path, bundle_dir: Path) -> Path:
    """Put the runner in <bundle>/bin, where its RPATH ($ORIGIN/../lib) finds the bundle's lib/."""
    (bundle_dir / "bin").mkdir(exist_ok=True)
    return Path(shutil.copy2(runner, bundle_dir / "bin" / runner.name))


def _run_bundle(runner: Path, bundle_dir: Path, inputs: dict[str, np.ndarray] | None,
                out: Path, qemu: bool = False) -> dict[str, np.ndarray]:
    files = []
    for name, value in (inputs or {}).items():
        files.append(out.with_name(f"{out.name}-{name}.bin"))
        value.tofile(files[-1])
    proc = _check(_run([*(QEMU if qemu else []), _install(runner, bundle_dir), bundle_dir,
                        "--out", out, *files]))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    result = {}
    for spec in manifest["outputs"]:
        assert f"output {spec['name']}: {spec['dtype']}" in proc.stdout
        path = out / (re.sub(r"[^A-Za-z0-9_.-]", "_", spec["name"]) + ".bin")
        result[spec["name"]] = np.fromfile(path, spec["dtype"]).reshape(spec["shape"])
    return result


def _inputs(model: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    name = model.partition("-")[0]
    return {"x": rng.standard_normal((1, *zoo.ZOO[name][1])).astype("float32")}


@pytest.mark.parametrize("model", MODELS)
def test_x86_matches_python_bit_for_bit(model, export, x86_runner, workdir):
    directory = export(model, "host")
    inputs = _inputs(model)
    expected = tc.runtime.load(directory).run(inputs)
    actual = _run_bundle(x86_runner, directory, inputs, workdir / f"out-{model}-x86")
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape
        assert np.array_equal(actual[name], value), f"{model}: output {name} differs"


def test_x86_default_inputs(export, x86_runner, workdir):
    directory = export("cnn", "host")
    module = tc.runtime.load(directory)
    spec = module.signature.inputs[0]
    x = (((np.arange(np.prod(spec["shape"])) % 17) - 8) / 8).astype("float32")
    expected = module.run([x.reshape(spec["shape"])])
    actual = _run_bundle(x86_runner, directory, None, workdir / "out-default")
    assert np.array_equal(actual["y"], expected["y"])


def test_x86_threads_default_to_physical_cores(export, x86_runner, workdir):
    """The app sets TVM_NUM_THREADS to the physical cores unless the user set a count (TVM
    alone takes half the logical CPUs on x86: one thread on a 2-core machine without SMT)."""
    directory = export("cnn", "host")
    app = _install(x86_runner, directory)
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    runs = {n: _check(_run([app, directory, "--out", workdir / f"out-threads-{n}"], env=env))
            for n, env in (("default", clean), ("1", {**clean, "TVM_NUM_THREADS": "1"}))}
    assert f"threads {physical_cores()}\n" in runs["default"].stdout
    assert "threads 1\n" in runs["1"].stdout


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("model", MODELS)
def test_aarch64_under_qemu_matches_x86(model, board, export, x86_runner, aarch64_runner,
                                        workdir):
    inputs = _inputs(model)
    reference = _run_bundle(x86_runner, export(model, "host"), inputs,
                            workdir / f"out-{model}-{board}-ref")
    actual = _run_bundle(aarch64_runner, export(model, board), inputs,
                         workdir / f"out-{model}-{board}", qemu=True)
    for name, value in reference.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("board", BOARDS)
def test_int8_under_qemu_matches_x86(board, export, x86_runner, aarch64_runner, workdir):
    """An int8 static model: integer convs/matmuls on the board give the x86 results."""
    inputs = _inputs("cnn-int8")
    bundle_x86 = export("cnn-int8", "host")
    expected = tc.runtime.load(bundle_x86).run(inputs)
    reference = _run_bundle(x86_runner, bundle_x86, inputs, workdir / f"out-int8-{board}-ref")
    actual = _run_bundle(aarch64_runner, export("cnn-int8", board), inputs,
                         workdir / f"out-int8-{board}", qemu=True)
    assert "QuantizeConfig" in (bundle_x86 / "manifest.json").read_text()
    for name, value in reference.items():
        assert np.array_equal(value, expected[name])
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("board", BOARDS)
def test_int4_under_qemu_matches_x86(board, export, x86_runner, aarch64_runner, workdir):
    """int4 weight-only matmuls (nibbles unpacked in NEON registers) give the x86 results."""
    inputs = _inputs("transformer-int4")
    bundle_x86 = export("transformer-int4", "host")
    reference = _run_bundle(x86_runner, bundle_x86, inputs, workdir / f"out-int4-{board}-ref")
    bundle = export("transformer-int4", board)
    actual = _run_bundle(aarch64_runner, bundle, inputs, workdir / f"out-int4-{board}",
                         qemu=True)
    assert "int4" in (bundle / "manifest.json").read_text()
    for name, value in reference.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_bundle_layout_and_size(arch, export):
    directory = export("cnn", "host" if arch == "x86_64" else BOARDS[0])
    libs = sorted(p.name for p in (directory / "lib").iterdir())
    assert libs == ["libtvm_ffi.so", "libtvm_runtime.so"]
    for lib in (directory / "lib").iterdir():
        machine = int.from_bytes(lib.read_bytes()[18:20], "little")
        assert machine == {"x86_64": 62, "aarch64": 183}[arch], lib
    for name in ("include/tvmcompress.hpp", "include/dlpack/dlpack.h",
                 "include/tvm/ffi/function.h", "main.cpp", "CMakeLists.txt", "README.md"):
        assert (directory / name).is_file(), name
    assert not list((directory / "include").glob("*python*"))
    assert (directory / "toolchain-aarch64.cmake").is_file() == (arch == "aarch64")
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()
               and "bin" not in p.relative_to(directory).parts)
    assert size < 12 * 2**20, f"bundle is {size / 2**20:.1f} MB"
    readme = (directory / "README.md").read_text()
    assert "cmake -S . -B build" in readme and "glibc" in readme


def _fails_cleanly(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode > 0, f"expected a clean error exit, got {proc.returncode}: {proc.stderr}"
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr: {proc.stderr}"


def test_bad_bundles_and_inputs(export, x86_runner, tmp_path):
    directory = export("cnn", "host")
    runner = _install(x86_runner, directory)
    _fails_cleanly(_run([runner, tmp_path / "missing"]), "bundle directory not found")
    _fails_cleanly(_run([runner, tmp_path]), "no readable manifest.json")
    bad = tmp_path / "bad.bin"
    np.zeros(5, "float32").tofile(bad)
    _fails_cleanly(_run([runner, directory, bad]), "has 20 bytes", "x: float32[1, 3, 32, 32]",
                   "needs 12288")
    _fails_cleanly(_run([runner, directory, bad, bad]), "got 2 input file(s)")
    _fails_cleanly(_run([runner, directory, tmp_path / "nothing.bin"]), "cannot open input file")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_bundle_without_lib(arch, export, request, tmp_path):
    runner = request.getfixturevalue({"x86_64": "x86_runner", "aarch64": "aarch64_runner"}[arch])
    source = export("cnn", "host" if arch == "x86_64" else BOARDS[0])
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("bin"))
    shutil.rmtree(copy / "lib")
    binary = _install(runner, copy)
    proc = _run([*(QEMU if arch == "aarch64" else []), binary, copy])
    _fails_cleanly(proc, "libtvm_", "cannot open shared object file")


def test_manifest_errors(export, x86_runner, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(export("cnn", "host"), copy, ignore=shutil.ignore_patterns("bin", "lib"))
    runner = _install(x86_runner, export("cnn", "host"))
    (copy / "model.so").unlink()
    _fails_cleanly(_run([runner, copy]), "has a manifest but no", "model.so")
    (copy / "manifest.json").write_text("{not json")
    _fails_cleanly(_run([runner, copy]), "is not valid JSON")


def test_armv7_bundle_explains_missing_runtime(tmp_path):
    preset = tc.resolve_target("raspberry-pi-3")
    manifest = {"preset": preset.name, "arch": "armv7", "device": "cpu",
                "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}], "outputs": []}
    bundle.add_deploy_files(tmp_path, preset, manifest)
    assert not (tmp_path / "lib").exists()
    assert (tmp_path / "include" / "tvmcompress.hpp").is_file()
    readme = (tmp_path / "README.md").read_text()
    assert "No Armv7 TVM runtime wheel exists" in readme
    assert "libtvm_runtime.so" in readme and "libtvm_ffi.so" in readme


def test_cuda_bundle_ships_cuda_runtime(tmp_path):
    preset = tc.resolve_target("cuda-sm80")
    manifest = {"preset": preset.name, "arch": "x86_64", "device": "cuda",
                "inputs": [], "outputs": []}
    bundle.add_deploy_files(tmp_path, preset, manifest)
    assert (tmp_path / "lib" / bundle.CUDA_RUNTIME).is_file()
    readme = (tmp_path / "README.md").read_text()
    assert "CUDA 13" in readme and "libcudart.so.13" in readme


def test_download_failure_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(bundle.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found (network unreachable)"))
    with pytest.raises(ExportError) as info:
        bundle._cached_libraries("aarch64")
    message = str(info.value)
    assert "network unreachable" in message
    assert "pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64" in message
    assert f"-d {tmp_path}/runtime/aarch64/" in message and "apache-tvm-ffi==" in message


def test_separate_weights_match_embedded(export, x86_runner, workdir, tmp_path):
    """weights.params beside model.so: Python and C++ give the embedded export's outputs."""
    embedded = export("cnn", "host")
    compiled = tc.compile(zoo.build("cnn", 1), "host", input_shapes={"x": [1, 3, 32, 32]})
    separate = compiled.export(workdir / "cnn-host-separate", separate_weights=True)
    assert (separate / "weights.params").is_file()
    inputs = _inputs("cnn")
    expected = tc.runtime.load(embedded).run(inputs)["y"]
    assert np.array_equal(tc.runtime.load(separate).run(inputs)["y"], expected)
    actual = _run_bundle(x86_runner, separate, inputs, workdir / "out-separate")
    assert np.array_equal(actual["y"], expected)
    copy = tmp_path / "no-weights"
    shutil.copytree(separate, copy, symlinks=True)
    (copy / "weights.params").unlink()
    _fails_cleanly(_run([_install(x86_runner, copy), copy]), "weights.params is missing")
    with pytest.raises(ExportError, match=r"weights\.params is missing"):
        tc.runtime.load(copy)


def test_cuda_device_option(export, x86_runner):
    """--device cuda builds into the runner; without a GPU it fails with a clear message."""
    cpu_bundle, cuda_bundle = export("mlp", "host"), export("mlp", "cuda-sm86")
    runner = _install(x86_runner, cuda_bundle)
    _fails_cleanly(_run([_install(x86_runner, cpu_bundle), cpu_bundle, "--device", "cuda"]),
                   "device 'cuda' requested", "compiled for 'cpu'")
    proc = _run([runner, cuda_bundle, "--device", "cuda", "--out", cuda_bundle / "out"])
    if tc.resolve_target("cuda-sm86").why_not_runnable_here():  # no GPU here (CI)
        _fails_cleanly(proc, "libtvm_runtime_cuda.so")
    else:
        _check(proc)


def test_wrong_architecture_is_a_clear_error(export, x86_runner, tmp_path):
    board = export("cnn", BOARDS[0])
    runner = _install(x86_runner, export("cnn", "host"))
    _fails_cleanly(_run([runner, board]), "is built for aarch64", "runs on x86_64")
    with pytest.raises(ExportError, match="built for aarch64"):
        tc.runtime.load(board)
    copy = tmp_path / "lying"  # a manifest that claims x86_64 for an aarch64 library
    shutil.copytree(board, copy, ignore=shutil.ignore_patterns("bin"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["arch"] = "x86_64"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="Could not load"):
        tc.runtime.load(copy)
    _fails_cleanly(_run([runner, copy]), "cannot load", "model.so")
