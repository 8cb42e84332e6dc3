"""Load, validate and resolve target presets; a preset is a JSON file in ``presets/``.

Adding a board is adding a file: ``name``, ``description``, ``target`` (a TVM target dict),
``host`` (the host target dict for GPU presets, else null), ``export_cc`` (the compiler used to
link the exported library, null for this machine's ``g++``), ``debian_package`` (provides
``export_cc``), ``arch`` (the CPU architecture the library runs on) and optional ``cuda_major``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import re
from functools import cache
from pathlib import Path
from typing import Any

import tvm

from tvmcompress.errors import TargetError

PRESET_DIR = Path(__file__).parent / "presets"
_FIELDS = ("name", "description", "target", "host", "export_cc", "debian_package", "arch")
# Instruction-set features (not LLVM tuning flags such as "fast-shld-rotate").
_ISA_FEATURE = re.compile(r"^(sse|ssse|avx|fma|f16c|bmi|popcnt|lzcnt|movbe|vnni|amx|aes|pclmul"
                          r"|sha|vpclmul|gfni|adx|cx16|neon|dotprod|i8mm|sve|fp16|bf16)")
_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    """A named compilation target: what to generate code for and how to link it."""

    name: str
    description: str
    target: dict[str, Any]
    host: dict[str, Any] | None = None
    export_cc: str | None = None
    debian_package: str | None = None
    arch: str = "x86_64"
    cuda_major: int | None = None

    @property
    def tvm_target(self) -> tvm.target.Target:
        """The TVM target, with its host attached for GPU presets."""
        config = dict(self.target)
        if self.host is not None:
            config["host"] = dict(self.host)
        return tvm.target.Target(config)

    @property
    def is_gpu(self) -> bool:
        return self.target["kind"] in ("cuda", "rocm", "vulkan", "metal", "opencl")

    def why_not_runnable_here(self) -> str:
        """Empty when code built for this preset runs on this machine, else the reason."""
        if self.arch != host_arch():
            return f"it is built for {self.arch}, this machine is {host_arch()}"
        if self.is_gpu:
            device = tvm.device(self.target["kind"], 0)
            return "" if device.exist else f"this machine has no {self.target['kind']} device"
        missing = sorted(_cpu_features(self.target) - _cpu_features(_detect_host()))
        if missing:
            return f"this CPU lacks features the target uses: {', '.join(missing[:6])}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def host_arch() -> str:
    """This machine's CPU architecture in preset terms (x86_64, aarch64, ...)."""
    machine = platform.machine().lower()
    return _MACHINE_ARCH.get(machine, machine)


def _cpu_features(target: dict[str, Any]) -> set[str]:
    from tvm.target import codegen

    llvm = {k: v for k, v in target.items() if k in ("kind", "mtriple", "mcpu", "mattr")}
    features = codegen.llvm_get_cpu_features(tvm.target.Target(llvm))
    return {f for f in features if _ISA_FEATURE.match(f)}


@cache
def _detect_host() -> dict[str, Any]:
    """The llvm target dict of this machine: a plain triple, LLVM's CPU name, physical cores."""
    from tvm.target import codegen

    arch = host_arch()
    linux = platform.system() == "Linux"
    triple = f"{arch}-linux-gnu" if linux else str(codegen.llvm_get_system_triple())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "kind": "llvm",
        "mtriple": triple,
        "mcpu": str(codegen.llvm_get_system_cpu()),
        "num-cores": int(cores or 1),
    }


def _load(path: Path) -> TargetPreset:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TargetError(f"Target preset file {path} is not valid JSON: {err}") from err
    missing = [f for f in ("name", "description", "target") if f not in data]
    if missing:
        raise TargetError(f"Target preset file {path} lacks field(s) {', '.join(missing)}")
    if data["name"] != path.stem:
        raise TargetError(f"Target preset file {path} names itself {data['name']!r}; "
                          f"the name must equal the file name {path.stem!r}")
    if data.pop("detect", False):
        data["target"] = dict(_detect_host())
        data["arch"] = host_arch()
    known = {f.name for f in dataclasses.fields(TargetPreset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TargetError(f"Target preset file {path} has unknown field(s) {unknown}; "
                          f"known fields: {sorted(known)}")
    preset = TargetPreset(**data)
    try:
        preset.tvm_target
    except Exception as err:
        raise TargetError(f"Target preset {preset.name!r}: TVM rejects its target: {err}") from err
    return preset


@cache
def _presets() -> dict[str, TargetPreset]:
    return {p.stem: _load(p) for p in sorted(PRESET_DIR.glob("*.json"))}


def list_presets() -> list[TargetPreset]:
    """Every preset shipped with tvmcompress, sorted by name."""
    return list(_presets().values())


def resolve_target(target: str | dict | tvm.target.Target | TargetPreset) -> TargetPreset:
    """Turn a preset name, a TVM target dict or a ``tvm.target.Target`` into a preset.

    Raises
    ------
    TargetError
        For unknown names (listing the closest presets) and target dicts TVM rejects.
    """
    if isinstance(target, TargetPreset):
        return target
    if isinstance(target, str):
        presets = _presets()
        if target in presets:
            return presets[target]
        close = difflib.get_close_matches(target, presets, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TargetError(f"Unknown target preset {target!r}.{hint} Known presets: "
                          f"{', '.join(presets)}. A TVM target dict is accepted too, e.g. "
                          '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}.')
    if isinstance(target, tvm.target.Target):
        target = _plain(target.export())
    if not isinstance(target, dict):
        raise TargetError(f"target must be a preset name, a TVM target dict or a "
                          f"tvm.target.Target, got {type(target).__name__}")
    return _preset_from_dict(dict(target))


def _plain(value: Any) -> Any:
    """TVM's Map/Array/String (from ``Target.export()``) as plain JSON-able Python values."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value if not isinstance(value, str) else str(value)
    if isinstance(value, tvm.target.Target):
        return _plain(value.export())
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)


# The compiler that links libraries for another CPU architecture, and its Debian package.
CROSS_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "armv7": ("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"),
}


def _preset_from_dict(config: dict[str, Any]) -> TargetPreset:
    config = _plain(config)
    host = config.pop("host", None)
    for key in ("tag", "keys", "features"):
        config.pop(key, None)
        if isinstance(host, dict):
            host.pop(key, None)
    if isinstance(host, dict):
        host = {k: v for k, v in host.items() if not k.startswith("feature.")}
    if "kind" not in config:
        raise TargetError(f"Target dict {config} has no 'kind' (e.g. 'llvm' or 'cuda')")
    triple = (host or config).get("mtriple", "")
    arch = triple.split("-")[0] if triple else host_arch()
    arch = {"armv7a": "armv7", "armv7": "armv7", "arm64": "aarch64"}.get(arch, arch)
    if config["kind"] != "llvm" and host is None:
        host = {"kind": "llvm", "mtriple": f"{host_arch()}-linux-gnu"}
    cc, package = CROSS_COMPILERS.get(arch, (None, None)) if arch != host_arch() else (None, None)
    preset = TargetPreset(name="custom", description="User-supplied TVM target dict",
                          target={k: v for k, v in config.items() if not k.startswith("feature.")},
                          host=host, export_cc=cc, debian_package=package, arch=arch)
    try:
        preset.tvm_target
    except Exception as err:
        raise TargetError(f"TVM rejects the target dict {config}: {err}") from err
    return preset
