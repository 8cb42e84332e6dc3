"""run() input checking, atomic export and runtime.load of good and broken exports."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import tvmcompress as tc

EXPECTED_INPUTS = ["a: float32[2, 3]", "b: float32[2, 3]"]


@pytest.fixture
def ab():
    """Inputs of the two-input model ``y = a - 2 * b``, seeded."""
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal([2, 3]).astype("float32") for n in ("a", "b")}


def test_run_dict_and_list(two_input, ab):
    """Dict by name and list in signature order give the same, correct result."""
    by_name = two_input.run({"b": ab["b"], "a": ab["a"]})["y"]
    in_order = two_input.run([ab["a"], ab["b"]])["y"]
    np.testing.assert_array_equal(by_name, in_order)
    np.testing.assert_allclose(by_name, ab["a"] - 2 * ab["b"], rtol=1e-6)


@pytest.mark.parametrize("make_inputs, needle", [
    (lambda a, b: {"a": a, "c": b}, "unexpected ['c']"),
    (lambda a, b: {"a": a}, "missing ['b']"),
    (lambda a, b: [a], "Got 1 positional"),
    (lambda a, b: [a, b, b], "Got 3 positional"),
    (lambda a, b: {"a": a, "b": b.T}, "'b' has shape [3, 2]"),
    (lambda a, b: {"a": a.astype("float64"), "b": b}, "'a' has dtype float64"),
], ids=["wrong-name", "missing", "too-few", "too-many", "shape", "dtype"])
def test_bad_inputs_name_expected(two_input, ab, make_inputs, needle):
    """Each mistake is an InputError saying what was wrong and listing the expected inputs."""
    with pytest.raises(tc.InputError) as info:
        two_input.run(make_inputs(ab["a"], ab["b"]))
    message = str(info.value)
    assert needle in message
    assert all(spec in message for spec in EXPECTED_INPUTS), message


@pytest.fixture
def host_mlp(compiled_zoo):
    return compiled_zoo("mlp", 1)


@pytest.fixture
def good_export(host_mlp, tmp_path):
    """A host mlp export in ``tmp_path/exports/out``; the parent holds nothing else."""
    return host_mlp.export(tmp_path / "exports" / "out")


def _snapshot(directory):
    """Every file under ``directory`` by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_still_good(directory, host_mlp):
    """The export in ``directory`` loads and computes what ``host_mlp`` does."""
    x = np.random.default_rng(5).standard_normal([1, 64]).astype("float32")
    module = tc.runtime.load(directory)
    np.testing.assert_array_equal(module.run([x])["y"], host_mlp.run([x])["y"])
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name], "stray files"


def test_failed_export_keeps_old(good_export, host_mlp, compiled_zoo, tmp_path, monkeypatch):
    """No cross compiler on PATH: TargetError naming the package; the old export survives."""
    pi4 = compiled_zoo("mlp", 1, "raspberry-pi-4")
    before = _snapshot(good_export)
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(tc.TargetError, match="g\\+\\+-aarch64-linux-gnu"):
        pi4.export(good_export)
    monkeypatch.undo()
    assert _snapshot(good_export) == before
    _assert_still_good(good_export, host_mlp)


def test_broken_compiler_keeps_old(good_export, host_mlp, compiled_zoo, tmp_path, monkeypatch):
    """A cross compiler that fails mid-export: ExportError; the old export survives."""
    pi4 = compiled_zoo("mlp", 1, "raspberry-pi-4")
    before = _snapshot(good_export)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "aarch64-linux-gnu-g++"
    fake.write_text("#!/bin/sh\necho 'internal compiler error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(tc.ExportError, match="internal compiler error"):
        pi4.export(good_export)
    monkeypatch.undo()
    assert _snapshot(good_export) == before
    _assert_still_good(good_export, host_mlp)


def test_export_replaces_export(good_export, compiled_zoo):
    """Exporting over an earlier export swaps it for the new one, leaving no backup."""
    batch8 = compiled_zoo("mlp", 8)
    batch8.export(good_export)
    module = tc.runtime.load(good_export)
    assert module.signature.inputs[0]["shape"] == [8, 64]
    assert sorted(p.name for p in good_export.parent.iterdir()) == [good_export.name]


def test_export_refuses_foreign_dir(host_mlp, tmp_path):
    """A non-empty directory that is not an export is never overwritten."""
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(tc.ExportError, match="not a tvmcompress export"):
        host_mlp.export(target)
    assert _snapshot(target) == {"notes.txt": b"precious"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_manifest_contents(good_export, host_mlp):
    """manifest.json says what to feed, what comes out, for which target, built by what."""
    manifest = json.loads((good_export / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 64], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["preset"] == "host" and manifest["arch"] == "x86_64"
    assert manifest["target"]["target"] == host_mlp.preset.target
    for package in ("tvmcompress", "apache-tvm", "apache-tvm-ffi", "onnx"):
        assert manifest["versions"][package] == metadata.version(package)
    assert tc.CompressConfig.from_dict(manifest["config"]) == tc.CompressConfig()


def test_load_without_manifest(good_export):
    (good_export / "manifest.json").unlink()
    with pytest.raises(tc.ExportError, match=r"no manifest\.json"):
        tc.runtime.load(good_export)


@pytest.mark.parametrize("corrupt", [
    lambda m: "{not json",
    lambda m: "[1, 2]",
    lambda m: json.dumps({k: v for k, v in m.items() if k != "library"}),
    lambda m: json.dumps({k: v for k, v in m.items() if k != "inputs"}),
], ids=["not-json", "json-list", "no-library", "no-inputs"])
def test_load_corrupt_manifest(good_export, corrupt):
    """A damaged manifest is an ExportError that points at manifest.json."""
    path = good_export / "manifest.json"
    path.write_text(corrupt(json.loads(path.read_text())))
    with pytest.raises(tc.ExportError, match=r"manifest\.json"):
        tc.runtime.load(good_export)


@pytest.fixture
def pi4_export(compiled_zoo, tmp_path):
    return compiled_zoo("mlp", 1, "raspberry-pi-4").export(tmp_path / "pi4")


def test_load_aarch64_export(pi4_export):
    with pytest.raises(tc.ExportError, match="aarch64"):
        tc.runtime.load(pi4_export)


def test_load_aarch64_library_without_arch(pi4_export):
    """Even when the manifest does not say aarch64, dlopen's refusal is an ExportError."""
    path = pi4_export / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["arch"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(tc.ExportError, match=r"model\.so"):
        tc.runtime.load(pi4_export)


def test_load_truncated_library_does_not_crash(good_export):
    """A half-copied model.so must be an ExportError, not a crash (run in a subprocess)."""
    library = good_export / "model.so"
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    code = ("import tvmcompress as tc, sys\n"
            f"try:\n    tc.runtime.load({str(good_export)!r})\n"
            "except tc.ExportError as err:\n    print('ExportError:', err)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"crashed with {result.returncode}: {result.stderr[-500:]}"
    assert "ExportError:" in result.stdout and "model.so" in result.stdout
