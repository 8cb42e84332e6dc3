"""Run, benchmark and load compiled modules; needs only numpy and TVM's runtime.

An exported module is a directory: ``model.so`` (the Relax VM executable with its kernels and
weights) and ``manifest.json`` (signature, target, versions, config). :func:`load` runs it
without onnx, onnxruntime or any tvmcompress pass.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvmcompress.errors import ExportError, InputError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Signature:
    """Names, shapes and dtypes of a module's inputs and outputs."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    def describe_inputs(self) -> str:
        return ", ".join(f"{i['name']}: {i['dtype']}{list(i['shape'])}" for i in self.inputs)


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency statistics of repeated runs, in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    def __str__(self) -> str:
        return (f"median {self.median_ms:.3f} ms (min {self.min_ms:.3f}, max {self.max_ms:.3f}, "
                f"std {self.std_ms:.3f}) over {self.repeats} runs")


class Runner:
    """A Relax VM over a built library, with input checking by the signature."""

    def __init__(self, library: Any, signature: Signature, device: str = "cpu"):
        import tvm
        from tvm import relax

        self.signature = signature
        self.library = library
        self._tvm = tvm
        self._device = tvm.cpu() if device == "cpu" else tvm.device(device, 0)
        self._vm = relax.VirtualMachine(library, self._device)

    @property
    def device(self) -> Any:
        return self._device

    def prepare(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        """Check ``inputs`` against the signature and move them to the device."""
        arrays = self._ordered(inputs)
        tensors = []
        for spec, value in zip(self.signature.inputs, arrays, strict=True):
            array = np.asarray(value)
            if tuple(array.shape) != tuple(spec["shape"]):
                raise InputError(f"Input {spec['name']!r} has shape {list(array.shape)}, expected "
                                 f"{list(spec['shape'])}. "
                                 f"Inputs: {self.signature.describe_inputs()}")
            if array.dtype != np.dtype(spec["dtype"]):
                raise InputError(f"Input {spec['name']!r} has dtype {array.dtype}, expected "
                                 f"{spec['dtype']} (use .astype('{spec['dtype']}')). "
                                 f"Inputs: {self.signature.describe_inputs()}")
            tensors.append(self._tvm.runtime.tensor(np.ascontiguousarray(array), self._device))
        return tensors

    def _ordered(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        names = self.signature.input_names
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            extra = [n for n in inputs if n not in names]
            if missing or extra:
                raise InputError(f"Inputs do not match the model: missing {missing}, unexpected "
                                 f"{extra}. Expected: {self.signature.describe_inputs()}")
            return [inputs[n] for n in names]
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if len(inputs) != len(names):
            raise InputError(f"Got {len(inputs)} positional input(s), the model takes "
                             f"{len(names)}: {self.signature.describe_inputs()}")
        return list(inputs)

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """Run once; returns outputs by name as numpy arrays."""
        return self._collect(self._vm["main"](*self.prepare(inputs)))

    def _collect(self, result: Any) -> dict[str, np.ndarray]:
        results = [result] if hasattr(result, "numpy") else list(result)
        return {o["name"]: r.numpy() for o, r in zip(self.signature.outputs, results, strict=True)}

    def profile(self, inputs: Mapping[str, Any] | Sequence[Any] | None = None, rounds: int = 5,
                **build_facts: Any) -> Any:
        """Each kernel's share of a run (``tvmcompress.profile``); inputs default to random
        ones. ``build_facts``: ``flops``, ``unscheduled``, ``tuned`` from the build."""
        from tvmcompress.profile import profile

        tensors = self.prepare(inputs if inputs is not None else random_inputs(self.signature))
        return profile(self, tensors, rounds=rounds, **build_facts)

    def benchmark(self, inputs: Mapping[str, Any] | Sequence[Any] | None = None,
                  warmup: int = 3, repeat: int = 20, min_seconds: float = 0.0) -> BenchmarkResult:
        """Time ``main`` after ``warmup`` runs (at least ``SETTLE_S`` seconds of them):
        ``repeat`` timed runs (more if under ``min_seconds``). Inputs default to random ones of
        the right shapes."""
        tensors = self.prepare(inputs if inputs is not None else random_inputs(self.signature))
        main = self._vm["main"]
        warm_up(lambda: main(*tensors), warmup)
        times, start = [], time.perf_counter()
        while len(times) < repeat or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            main(*tensors)
            self._device.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return BenchmarkResult(statistics.median(times), statistics.fmean(times),
                               statistics.pstdev(times), min(times), max(times), len(times))


# Warm-up lasts at least this long: an engine timed just before (onnxruntime's pool, or
# TVM's) leaves its worker threads spinning for a while, and on a 2-core machine they take a
# core from the next one (benchmarks/bench_schedules.py warms up the same way).
SETTLE_S = 0.1


def warm_up(fn: Any, runs: int, seconds: float = SETTLE_S) -> None:
    """Call ``fn`` at least ``runs`` times and for at least ``seconds``."""
    end = time.perf_counter() + seconds
    done = 0
    while done < runs or time.perf_counter() < end:
        fn()
        done += 1


def time_ms(fn: Any, repeat: int, warmup: int = 1) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (and at least
    ``SETTLE_S`` seconds of them), in ms."""
    warm_up(fn, warmup)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def random_inputs(signature: Signature, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a signature: normal floats, integers in [0, 2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in signature.inputs:
        if np.issubdtype(np.dtype(spec["dtype"]), np.floating):
            out[spec["name"]] = rng.standard_normal(spec["shape"]).astype(spec["dtype"])
        else:
            out[spec["name"]] = rng.integers(0, 2, spec["shape"]).astype(spec["dtype"])
    return out


class LoadedModule(Runner):
    """An exported module loaded back from its directory."""

    def __init__(self, directory: Path, manifest: dict[str, Any], device: str):
        import tvm

        self.directory = directory
        self.manifest = manifest
        library = tvm.runtime.load_module(str(directory / manifest["library"]))
        super().__init__(library, Signature(manifest["inputs"], manifest["outputs"]), device)
        self._weights: list[Any] = []
        if manifest.get("weights"):  # exported with separate_weights: passed after the inputs
            from tvmcompress.weights import load_weights

            self._weights = load_weights(directory / manifest["weights"]["file"],
                                         manifest["weights"]["names"], self._device)

    def prepare(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        return super().prepare(inputs) + self._weights

    def profile(self, inputs: Mapping[str, Any] | Sequence[Any] | None = None,
                rounds: int = 5) -> Any:
        """Per-kernel times, with the FLOPs and schedule facts the export recorded."""
        facts = self.manifest.get("kernels", {})
        return super().profile(inputs, rounds, flops=facts.get("flops", {}),
                               unscheduled=facts.get("unscheduled", []),
                               tuned=facts.get("tuned", []))


def load(directory: str | Path, device: str | None = None) -> LoadedModule:
    """Load a directory written by ``CompiledModel.export`` and return a runnable module.

    Raises
    ------
    ExportError
        If the directory, its manifest or its library is missing or was built for another
        architecture.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{directory} is not an exported tvmcompress module: no {MANIFEST}")
    manifest = read_manifest(manifest_path)
    _check_runnable_here(manifest, directory)
    try:
        return LoadedModule(directory, manifest, device or manifest.get("device", "cpu"))
    except Exception as err:
        raise ExportError(f"Could not load {directory / manifest['library']}: {err}") from err


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse and validate ``manifest.json``; every problem is an ExportError naming it."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} must hold a JSON object, not a {type(manifest).__name__}")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ExportError(f"{path} has format_version {manifest.get('format_version')}; "
                          f"this tvmcompress reads version {MANIFEST_VERSION}")
    for key in ("library", "inputs", "outputs"):
        if key not in manifest:
            raise ExportError(f"{path} lacks the field {key!r}; re-export the model")
    for key in ("inputs", "outputs"):
        specs = manifest[key]
        if not isinstance(specs, list) or not all(
                isinstance(s, dict) and {"name", "shape", "dtype"} <= set(s) for s in specs):
            raise ExportError(f"{path}: {key!r} must be a list of {{name, shape, dtype}} objects")
    return manifest


def library_digest(path: Path) -> str:
    """sha256 of a library file, so a truncated or swapped copy is caught before dlopen."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_runnable_here(manifest: dict[str, Any], directory: Path) -> None:
    import platform

    library = directory / manifest["library"]
    if not library.is_file():
        raise ExportError(f"{directory} has a manifest but no library {library.name}")
    expected = manifest.get("library_sha256")
    if expected and library_digest(library) != expected:
        raise ExportError(f"{library} does not match the sha256 in {MANIFEST}: the file is "
                          "truncated or was replaced; copy the whole export again")
    arch = manifest.get("arch")
    here = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                        platform.machine().lower())
    if arch and arch != here:
        raise ExportError(f"{library} was built for {arch} (target {manifest.get('preset')}); "
                          f"this machine is {here}. Run it on the board, or compile for this "
                          f"machine with --target host")
