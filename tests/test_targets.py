"""Target presets: each builds code for what it names; cross exports are real aarch64 ELF."""

from __future__ import annotations

import json
import os
import platform
import shutil

import pytest
import tvm

import tvmcompress as tc

PRESETS = [p.name for p in tc.list_presets()]
CUDA_PRESETS = ["cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm89", "cuda-sm90", "jetson-orin"]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
# LLVM feature name -> /proc/cpuinfo flag, for the ISA extensions kernels are built with.
CPU_FLAGS = {"sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
             "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vnni": "avx512_vnni"}


def _cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        line = next(line for line in f if line.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def _llvm_source(compiled: tc.CompiledModel) -> str:
    """LLVM IR of the host-side code (kernels for CPU targets, launchers for GPU ones)."""
    (llvm,) = [m for m in compiled.executable.mod.imports if m.kind == "llvm"]
    return llvm.inspect_source("ll")


def _elf_machine(path) -> int:
    """e_machine of an ELF64 little-endian shared object; fails on anything else."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2 and header[5] == 1, "not ELF64 little-endian"
    assert int.from_bytes(header[16:18], "little") == 3, "not a shared object (ET_DYN)"
    return int.from_bytes(header[18:20], "little")


def test_presets_listed():
    assert len(PRESETS) == len(set(PRESETS)) >= 15
    assert {"host", "raspberry-pi-4", "raspberry-pi-5", *CUDA_PRESETS} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_for_its_target(name, compiled_zoo):
    """The mlp compiles, and the LLVM code is for the preset's triple and CPU."""
    preset = tc.resolve_target(name)
    assert preset.name == name and preset.tvm_target.kind.name == preset.target["kind"]
    compiled = compiled_zoo("mlp", 1, name)
    assert compiled.build_info.kernels == 3
    cpu = preset.host or preset.target
    source = _llvm_source(compiled)
    assert f'target triple = "{cpu["mtriple"]}"' in source
    if "mcpu" in cpu:
        assert f'"target-cpu"="{cpu["mcpu"]}"' in source


def test_unknown_name_suggests():
    with pytest.raises(tc.TargetError) as info:
        tc.resolve_target("raspbery-pi-4")
    assert "Did you mean raspberry-pi-4" in str(info.value)
    assert "'raspbery-pi-4'" in str(info.value)


@pytest.mark.parametrize("bad, needle", [
    ({"mcpu": "znver3"}, "no 'kind'"),
    ({"kind": "no-such-kind"}, "no-such-kind"),
    (42, "int"),
])
def test_bad_target_values(bad, needle):
    with pytest.raises(tc.TargetError, match=needle):
        tc.resolve_target(bad)


X86_DICT = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2",
            "mattr": ["+sse4.2"]}


@pytest.mark.parametrize("target", [X86_DICT, tvm.target.Target(X86_DICT)], ids=["dict", "Target"])
def test_raw_target_runs_and_exports(target, zoo_onnx, zoo_inputs, assert_matches_ort,
                                     tmp_path):
    """A TVM target dict or Target compiles, runs here, and exports with its manifest."""
    compiled = tc.compile(zoo_onnx("mlp"), target=target, input_shapes={"x": [2, 64]})
    assert compiled.preset.target["mcpu"] == "x86-64-v2"
    assert_matches_ort(zoo_onnx("mlp"), compiled, zoo_inputs("mlp", 2))
    manifest = json.loads((compiled.export(tmp_path / "custom") / "manifest.json").read_text())
    assert manifest["target"]["target"]["mcpu"] == "x86-64-v2"


def test_raw_aarch64_dict_exports_aarch64(zoo_onnx, tmp_path):
    """A custom aarch64 triple is cross-linked like the aarch64 presets are."""
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    compiled = tc.compile(zoo_onnx("mlp"), target=target, input_shapes={"x": [1, 64]})
    out = compiled.export(tmp_path / "custom-aarch64")
    assert _elf_machine(out / "model.so") == ELF_MACHINE["aarch64"]


def test_host_preset_detects_this_cpu():
    """Triple, core count and ISA features agree with the OS's view of this machine."""
    from tvm.target import codegen

    host = tc.resolve_target("host")
    assert host.target["mtriple"].split("-")[0] == platform.machine()
    assert host.target["num-cores"] == len(os.sched_getaffinity(0))
    llvm = {k: v for k, v in host.target.items() if k != "num-cores"}
    features = set(codegen.llvm_get_cpu_features(tvm.target.Target(llvm)))
    flags = _cpuinfo_flags()
    for feature, flag in CPU_FLAGS.items():
        assert (feature in features) == (flag in flags), f"{feature}: LLVM vs /proc/cpuinfo"
    assert host.why_not_runnable_here() == ""


@pytest.mark.parametrize("name, flag", [("x86-64-avx512", "avx512f"),
                                        ("x86-64-vnni", "avx512_vnni")])
def test_presets_beyond_this_cpu(name, flag, compiled_zoo, zoo_onnx, zoo_inputs,
                                assert_matches_ort):
    """Code using instructions this CPU lacks is refused by .run(), never executed."""
    compiled = compiled_zoo("mlp", 1, name)
    inputs = zoo_inputs("mlp", 1)
    if flag in _cpuinfo_flags():  # a CPU that has them: the code must run correctly
        assert_matches_ort(zoo_onnx("mlp"), compiled, inputs)
        return
    with pytest.raises(tc.TargetError) as info:
        compiled.run(inputs)
    message = str(info.value)
    assert name in message and flag.replace("_", "") in message and "host" in message


@pytest.mark.parametrize("name", CUDA_PRESETS)
def test_cuda_presets_compile_and_export(name, compiled_zoo, zoo_onnx, zoo_inputs,
                                         assert_matches_ort, tmp_path):
    """CUDA kernels are generated and exported here, no GPU needed; every kernel scheduled."""
    compiled = compiled_zoo("mlp", 1, name)
    assert compiled.build_info.unscheduled == []  # dlight's GPU Fallback schedules everything
    (llvm,) = [m for m in compiled.executable.mod.imports if m.kind == "llvm"]
    assert [m.kind for m in llvm.imports] == ["cuda"]
    assert "__global__" in llvm.imports[0].inspect_source()
    out = compiled.export(tmp_path / name)
    preset = tc.resolve_target(name)
    assert _elf_machine(out / "model.so") == ELF_MACHINE[preset.arch]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == "cuda" and manifest["arch"] == preset.arch
    if preset.arch == platform.machine() and tvm.cuda().exist:
        assert_matches_ort(zoo_onnx("mlp"), compiled, zoo_inputs("mlp", 1))
    else:
        with pytest.raises(tc.TargetError, match=r"no cuda device|built for aarch64"):
            compiled.run(zoo_inputs("mlp", 1))


@pytest.mark.parametrize("name", ["raspberry-pi-4", "raspberry-pi-5"])
def test_raspberry_pi_exports_are_aarch64(name, compiled_zoo, tmp_path):
    """Cross-linked with aarch64-linux-gnu-g++ (CI installs it; missing means failure)."""
    assert shutil.which("aarch64-linux-gnu-g++"), "apt-get install g++-aarch64-linux-gnu"
    out = compiled_zoo("mlp", 1, name).export(tmp_path / name)
    assert _elf_machine(out / "model.so") == ELF_MACHINE["aarch64"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "aarch64" and manifest["preset"] == name
