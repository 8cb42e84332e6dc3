"""``compile``: a model and a target in, a runnable, exportable ``CompiledModel`` out."""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from tvmcompress import cuda, reference, runtime, weights
from tvmcompress.bundle import add_deploy_files
from tvmcompress.config import CompressConfig
from tvmcompress.errors import ConfigError, ExportError, TargetError
from tvmcompress.frontend import Model, load
from tvmcompress.passes import run_passes
from tvmcompress.report import Report, op_stats
from tvmcompress.schedules import BuildInfo, build, tunedb
from tvmcompress.schedules.tune import Tune
from tvmcompress.schedules.tune import tune as run_tuning
from tvmcompress.targets import TargetPreset, resolve_target

logger = logging.getLogger(__name__)


class CompiledModel:
    """A model compiled for one target: run, benchmark, export, report."""

    def __init__(self, model: Model, preset: TargetPreset, config: CompressConfig,
                 ir: tvm.IRModule, executable: Any, build_info: BuildInfo,
                 pass_log: list[dict[str, Any]] | None = None):
        self.model = model
        self.preset = preset
        self.config = config
        self.ir = ir
        self.executable = executable
        self.build_info = build_info
        self.pass_log = list(pass_log or [])
        self.signature = model.signature
        self._runner: runtime.Runner | None = None

    @property
    def runner(self) -> runtime.Runner:
        """The VM on this machine; an error if the target's code cannot run here."""
        if self._runner is None:
            reason = self.preset.why_not_runnable_here()
            if reason:
                raise TargetError(f"Cannot run a model compiled for {self.preset.name!r} on this "
                                  f"machine: {reason}. Export it and run it on the target, or "
                                  "compile with target='host'")
            self._runner = runtime.Runner(self.executable, self.signature, self.device)
        return self._runner

    @property
    def device(self) -> str:
        return self.preset.target["kind"] if self.preset.is_gpu else "cpu"

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """Run once on inputs given by name (dict) or in order (list); outputs by name."""
        return self.runner.run(inputs)

    def benchmark(self, inputs: Mapping[str, Any] | Sequence[Any] | None = None,
                  warmup: int = 3, repeat: int = 20,
                  min_seconds: float = 0.0) -> runtime.BenchmarkResult:
        """Median and spread of ``repeat`` timed runs after ``warmup`` (random inputs by
        default)."""
        return self.runner.benchmark(inputs, warmup=warmup, repeat=repeat,
                                     min_seconds=min_seconds)

    def profile(self, inputs: Mapping[str, Any] | Sequence[Any] | None = None,
                rounds: int = 5):
        """Each kernel's share of a run, calls, time and GFLOP/s (``tvmcompress.profile``);
        unscheduled kernels that cost time are flagged."""
        return self.runner.profile(inputs, rounds, **self.build_info.kernel_facts())

    def report(self, measure: bool = True, repeat: int = 10,
               eval_inputs: Mapping[str, Any] | None = None) -> Report:
        """Params, weight bytes and MACs per op kind, original vs compiled; with ``measure``
        (and a target that runs here), latency and fidelity against onnxruntime too; with
        ``eval_inputs`` (and compression passes), fidelity against the uncompressed model on
        them (max abs error, cosine, top-1 agreement)."""
        rep = Report(self.preset.name, op_stats(self.model.mod), op_stats(self.ir),
                     self.build_info.seconds, self.build_info.kernels,
                     list(self.build_info.unscheduled), notes=list(self.model.notes),
                     passes=list(self.pass_log))
        rep.notes.append(f"{len(self.build_info.from_database)} of {self.build_info.kernels} "
                         "kernels scheduled from a tuning database, the others by the default "
                         "rules")
        if eval_inputs is not None and self.config.passes:
            from tvmcompress.passes.calibrate import quantization_fidelity

            base = compile(self.model, self.preset)
            for out, row in quantization_fidelity(base, self, eval_inputs).items():
                rep.fidelity[f"{out} vs float model"] = row
        if measure and not self.preset.why_not_runnable_here():
            self._measure(rep, repeat)
        elif measure:
            rep.notes.append(f"latency not measured: {self.preset.why_not_runnable_here()}")
        return rep

    def _measure(self, rep: Report, repeat: int) -> None:
        inputs = runtime.random_inputs(self.signature)
        session = reference.ort_session(self.model.onnx_model)
        expected = dict(zip([o.name for o in session.get_outputs()],
                            session.run(None, inputs), strict=True))
        actual = self.run(inputs)
        for name, value in actual.items():
            if name in expected:
                rep.fidelity[f"{name} vs onnxruntime"] = reference.fidelity(expected[name], value)
        rep.latency_ms["original (onnxruntime fp32)"] = statistics.median(
            runtime.time_ms(lambda: session.run(None, inputs), repeat))
        rep.latency_ms[f"compiled ({self.preset.name})"] = self.benchmark(
            inputs, repeat=repeat).median_ms

    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` holds: signature, target, versions, config."""
        return {
            "format_version": runtime.MANIFEST_VERSION,
            "library": runtime.LIBRARY,
            "preset": self.preset.name,
            "target": json.loads(json.dumps(self.preset.to_dict())),
            "arch": self.preset.arch,
            "device": self.device,
            "inputs": self.signature.inputs,
            "outputs": self.signature.outputs,
            "source": self.model.source,
            "config": self.config.to_dict(),
            "kernels": self.build_info.kernel_facts(),
            "versions": {pkg: _version(pkg) for pkg in
                         ("tvmcompress", "apache-tvm", "apache-tvm-ffi", "onnx")},
            **({"cuda": cuda.manifest_entry(self.preset)} if self.device == "cuda" else {}),
        }

    def export(self, directory: str | Path, separate_weights: bool = False) -> Path:
        """Write a deploy bundle to ``directory`` atomically: ``model.so``, ``manifest.json``,
        the TVM runtime libraries for the target's architecture (``lib/``), the C++ API and an
        example app (``include/``, ``main.cpp``, ``CMakeLists.txt``) and a README.

        Weights are embedded in ``model.so``; with ``separate_weights`` the model is rebuilt to
        take them from ``weights.params`` (loaded by ``tc.runtime.load`` and the C++ API).
        CUDA libraries are checked to hold device code for the preset's GPU.

        The export is built in a temporary sibling directory and moved into place only when
        complete; an existing export there is replaced, anything else is refused.
        """
        directory = Path(directory).resolve()
        _check_replaceable(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        staging.chmod(0o755)
        try:
            manifest = self.manifest()
            executable = self.executable
            if separate_weights:
                executable, manifest["weights"] = weights.export_separately(
                    self.ir, self.preset, staging)
            library = staging / runtime.LIBRARY
            executable.export_library(str(library), **self._link_args())
            if self.device == "cuda":
                manifest["cuda"]["device_code"] = [str(image) for image in cuda.check_device_code(
                    library.read_bytes(), self.preset.target["arch"], str(library))]
            manifest["library_sha256"] = runtime.library_digest(staging / runtime.LIBRARY)
            (staging / runtime.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            add_deploy_files(staging, self.preset, manifest)
            _replace(staging, directory)
        except Exception as err:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, ExportError | TargetError):
                raise
            raise ExportError(f"Export to {directory} failed: {err}") from err
        return directory

    def _link_args(self) -> dict[str, Any]:
        cc = self.preset.export_cc or "g++"
        if shutil.which(cc) is None:
            package = self.preset.debian_package or "g++"
            raise TargetError(f"Exporting for {self.preset.name!r} needs the compiler {cc!r}, "
                              f"which is not installed: apt-get install {package}")
        if self.preset.export_cc is None:
            return {}
        return {"fcompile": tvm.support.cc.cross_compiler(cc)}

    def __repr__(self) -> str:
        return (f"CompiledModel({self.model.source!r}, target={self.preset.name!r}, "
                f"inputs=[{self.signature.describe_inputs()}])")


def compile(
    model: Model | str | Path | Any,
    target: str | dict | tvm.target.Target | TargetPreset = "host",
    config: CompressConfig | None = None,
    tune: Tune | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    database: str | Path | None = None,
) -> CompiledModel:
    """Compile ``model`` for ``target``.

    Parameters
    ----------
    model
        A :class:`Model` from :func:`tvmcompress.load`, or anything ``load`` accepts.
    target
        A preset name (``tvmcompress targets`` lists them), a TVM target dict or Target.
    config
        The compression passes to run, in order; none by default.
    tune
        A :class:`tc.Tune`: tune the model's kernels with MetaSchedule for at most
        ``tune.seconds`` first, recording into ``tune.database``.
    input_shapes
        Static shapes for dynamic inputs, when ``model`` is not loaded yet.
    database
        A tuning database directory to read (besides the shipped one and the per-user one);
        kernels with a record there for a compatible target use it, the others the default
        rules.
    """
    if tune is not None and not isinstance(tune, Tune):
        raise ConfigError(f"tune must be a tc.Tune, got {type(tune).__name__}")
    if config is not None and not isinstance(config, CompressConfig):
        raise ConfigError(f"config must be a tc.CompressConfig, got {type(config).__name__}")
    config = config or CompressConfig()
    if not isinstance(model, Model):
        model = load(model, input_shapes=input_shapes)
    elif input_shapes:
        raise ConfigError("input_shapes applies when loading; this model is already loaded")
    preset = resolve_target(target)
    with preset.tvm_target:  # passes may choose by target (e.g. u8 x s8 activations on x86)
        ir, pass_log = run_passes(model.mod, config)
    tuning = run_tuning(ir, preset, tune) if tune is not None else None
    databases = tunedb.databases(database, tune.directory if tune else None)
    executable, info = build(ir, preset, tunedb.load(databases) if databases else None)
    info.tuning = tuning
    return CompiledModel(model, preset, config, ir, executable, info, pass_log)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _check_replaceable(directory: Path) -> None:
    if directory.is_file():
        raise ExportError(f"Cannot export to {directory}: it is a file")
    if directory.is_dir() and any(directory.iterdir()) \
            and not (directory / runtime.MANIFEST).is_file():
        raise ExportError(f"Cannot export to {directory}: it is a non-empty directory that is "
                          "not a tvmcompress export; choose another directory")


def _replace(staging: Path, directory: Path) -> None:
    """Move ``staging`` to ``directory``, swapping out an old export only at the end."""
    if not directory.exists():
        staging.rename(directory)
        return
    backup = directory.with_name(f".{directory.name}.old-{staging.name}")
    directory.rename(backup)
    try:
        staging.rename(directory)
    except OSError:
        backup.rename(directory)
        raise
    shutil.rmtree(backup, ignore_errors=True)
