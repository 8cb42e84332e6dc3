"""``tvmcompress compile --target <board> -o out/`` writes a deploy bundle; CLI errors are clear.

The bundle's model is run on the board under qemu by tests/test_cpp.py (same export path);
here the command line itself is checked end to end, as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvmcompress.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "cnn.onnx"
SHAPE = ["--input-shape", "x:1,3,32,32"]
AARCH64 = 183


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvmcompress.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)


def _machine(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


def test_compile_for_raspberry_pi_4_writes_the_bundle(tmp_path):
    out = tmp_path / "out"
    proc = _cli("compile", str(MODEL), *SHAPE, "--target", "raspberry-pi-4", "-o", f"{out}/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}/model.so" in proc.stdout and "aarch64" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "raspberry-pi-4" and manifest["arch"] == "aarch64"
    assert "weights" not in manifest  # embedded by default
    assert _machine(out / "model.so") == AARCH64
    libs = sorted(p.name for p in (out / "lib").iterdir())
    assert libs == ["libtvm_ffi.so", "libtvm_runtime.so"]
    assert all(_machine(out / "lib" / name) == AARCH64 for name in libs)
    for name in ("include/tvmcompress.hpp", "include/tvm/ffi/function.h", "main.cpp",
                 "CMakeLists.txt", "toolchain-aarch64.cmake", "README.md"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "raspberry-pi-4" in readme and "qemu-aarch64 -L /usr/aarch64-linux-gnu" in readme


def test_separate_weights_flag(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(MODEL), *SHAPE, "-o", str(out), "--separate-weights"]) == 0
    assert "weights.params" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["file"] == "weights.params" and manifest["weights"]["names"]
    assert (out / "weights.params").stat().st_size >= manifest["weights"]["bytes"]
    import tvm

    library = (out / "model.so").read_bytes()
    weights = tvm.runtime.load_param_dict_from_file(str(out / "weights.params"))
    assert sorted(weights) == sorted(manifest["weights"]["names"])
    for name in manifest["weights"]["names"]:
        value = weights[name].numpy()
        if value.nbytes >= 64:  # the weights are in weights.params only, not in the library
            assert value.tobytes() not in library, name


def test_unknown_preset_suggests_names(tmp_path, capsys):
    assert main(["compile", str(MODEL), *SHAPE, "--target", "raspbery-pi-4",
                 "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "raspbery-pi-4" in err and "raspberry-pi-4" in err


def test_missing_cross_compiler_names_the_package(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"  # a PATH without the aarch64 cross compiler
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert not any(Path(p, "aarch64-linux-gnu-g++").exists()
                   for p in os.environ["PATH"].split(os.pathsep))
    code = main(["compile", str(MODEL), *SHAPE, "--target", "raspberry-pi-4",
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "aarch64-linux-gnu-g++" in err and "apt-get install g++-aarch64-linux-gnu" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset", ["raspberry-pi-3"])
def test_armv7_bundle_readme_documents_the_runtime_build(preset, tmp_path):
    """Armv7: the model cross-builds, but no runtime wheel exists; the bundle says what to do."""
    import tvmcompress as tc
    from tvmcompress import bundle

    manifest = {"preset": preset, "arch": "armv7", "device": "cpu",
                "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}],
                "outputs": []}
    bundle.add_deploy_files(tmp_path, tc.resolve_target(preset), manifest)
    readme = (tmp_path / "README.md").read_text()
    assert "No Armv7 TVM runtime wheel exists" in readme
    assert "CMake >= 3.26" in readme and "-DUSE_LLVM=OFF" in readme
