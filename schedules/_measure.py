"""MetaSchedule plumbing that works on a small shared machine: an in-process builder, a cheap
worker start, and measuring one schedule the way tuning measures its candidates.

Stock ``LocalBuilder`` starts a fresh worker pool per batch and each worker imports
``tvm.s_tir.tensor_intrin`` (46-118 s here), so every build timed out; ``LocalRunner``'s
worker takes 10+ s to start and its 60 s timeout can eat a whole time budget. fp32 CPU
schedules need no tensor intrinsics: we build and time candidates in this process (a
kernel builds in well under a second), skip work past the deadline, and keep that import
out of the way while tuning contexts are made (:func:`no_intrinsics`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Iterator

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.s_tir.meta_schedule.runner import (
    PyRunner,
    PyRunnerFuture,
    RunnerFuture,
    RunnerInput,
    RunnerResult,
)

_INTRIN = "tvm.s_tir.tensor_intrin"


@contextlib.contextmanager
def no_intrinsics() -> Iterator[None]:
    """Let ``TuneContext`` skip importing the tensor intrinsics unless already loaded."""
    if _INTRIN in sys.modules:
        yield
        return
    sys.modules[_INTRIN] = types.ModuleType(_INTRIN)
    try:
        yield
    finally:
        sys.modules.pop(_INTRIN, None)


def build_kernel(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    from tvm.driver import build

    return build(mod, target=target)


_BUILT: dict[str, tvm.runtime.Module] = {}  # artifact path -> library, builder to runner


class Deadline:
    """The end of a tuning budget, and the longest unit of work that ran under it.

    Work is cut into units (a build, a timed run, a cost-model call, a round's start), each
    started only before the deadline, so a run ends at most one unit past it: ``longest``
    says how far that can be on this machine, now.
    """

    def __init__(self, seconds: float = math.inf):
        self.at = time.perf_counter() + seconds
        self.longest = 0.0

    def passed(self) -> bool:
        return time.perf_counter() > self.at

    def left(self) -> float:
        return self.at - time.perf_counter()

    def record(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    @contextlib.contextmanager
    def unit(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(time.perf_counter() - start)


@derived_object
class InProcessBuilder(PyBuilder):
    """Build candidates in this process; the runner takes the library from memory."""

    def __init__(self, deadline: Deadline | None = None):
        self.deadline = deadline or Deadline()

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for item in build_inputs:
            if self.deadline.passed():
                results.append(BuilderResult(None, "skipped: tuning time budget spent"))
                continue
            try:
                with self.deadline.unit():
                    lib = build_kernel(item.mod, item.target)
            except Exception as err:  # a failed candidate is a result, not a crash
                results.append(BuilderResult(None, f"{type(err).__name__}: {err}"))
                continue
            path = os.path.join(tempfile.mkdtemp(prefix="tvmcompress-ms-"), "lib")
            _BUILT[path] = lib
            results.append(BuilderResult(path, None))
        return results


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, result: RunnerResult):
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return self._result


@derived_object
class InProcessRunner(PyRunner):
    """Time candidates in this process (no worker to start), stopping at the deadline.

    One untimed call first: a candidate slower than ``slow_secs`` is not timed further, so
    a pathological schedule costs one call, not a whole measurement.
    """

    def __init__(self, deadline: Deadline | None = None, slow_secs: float = 2.0):
        self.deadline = deadline or Deadline()
        self.slow_secs = slow_secs

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        return [_Done(self._run_one(item)) for item in runner_inputs]

    def _run_one(self, item: RunnerInput) -> RunnerResult:
        lib = _BUILT.pop(item.artifact_path, None)
        if lib is None:
            return RunnerResult(None, "no library built")
        if self.deadline.passed():
            return RunnerResult(None, "skipped: tuning time budget spent")
        with self.deadline.unit():
            return self._time(lib, item)

    def _time(self, lib: tvm.runtime.Module, item: RunnerInput) -> RunnerResult:
        try:
            dev = tvm.cpu()
            args = [tvm.runtime.tensor(np.random.default_rng(0).uniform(-1, 1, a.shape)
                                       .astype(a.dtype), dev) for a in item.args_info]
            start = time.perf_counter()
            lib[lib.entry_name](*args)
            first = time.perf_counter() - start
            if first > min(self.slow_secs, self.deadline.left()):
                return RunnerResult(None, f"too slow to time ({first:.2f} s per call)")
            # Fast kernels: 6 repeats of >= 10 ms; slow ones: about 0.2 s of single calls.
            fast = first < 0.01
            timer = lib.time_evaluator(
                lib.entry_name, dev, number=3 if fast else 1, min_repeat_ms=10 if fast else 0,
                repeat=6 if fast else max(2, min(6, int(0.2 / first))))
            runs = sorted(float(s) for s in timer(*args).results)
            # Other processes only ever slow a run down: keep the faster half.
            return RunnerResult(runs[: len(runs) // 2], None)
        except Exception as err:
            return RunnerResult(None, f"{type(err).__name__}: {err}")


class TimeBudgetSpent(RuntimeError):
    """Raised inside MetaSchedule's search to end a round at the deadline."""


@derived_object
class DeadlineCostModel(PyCostModel):
    """XGBoost's cost model, refusing to predict past the deadline.

    The evolutionary search is C++ that calls back into the cost model every generation;
    raising there is the one way to stop a round mid-search, so the time budget holds to
    about one prediction (records measured so far are already in the database). A round's
    start (design spaces, first population) runs until the first prediction: call
    :meth:`round_started` so that it is timed as a unit too.
    """

    def __init__(self, deadline: Deadline):
        self.deadline = deadline
        self.inner = ms.cost_model.CostModel.create("xgb", num_tuning_cores=1)
        self._round_start: float | None = None

    def round_started(self) -> None:
        self._round_start = time.perf_counter()

    def load(self, path: str) -> None:
        self.inner.load(path)

    def save(self, path: str) -> None:
        self.inner.save(path)

    def update(self, context, candidates, results) -> None:
        if self.deadline.passed():
            return  # no round follows: training would only cost time
        with self.deadline.unit():
            self.inner.update(context, candidates, results)

    def predict(self, context, candidates) -> np.ndarray:
        if self._round_start is not None:
            self.deadline.record(time.perf_counter() - self._round_start)
            self._round_start = None
        if self.deadline.passed():
            raise TimeBudgetSpent("tuning time budget spent")
        with self.deadline.unit():
            return self.inner.predict(context, candidates)


def measure(sch: tvm.s_tir.Schedule, target: tvm.target.Target, builder, runner
            ) -> list[float] | str:
    """Run seconds of ``sch`` measured like a tuning candidate, or why it failed."""
    args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    built = builder.build([BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        return f"build failed: {built.error_msg}"
    try:
        result = runner.run([RunnerInput(built.artifact_path, "cpu", args)])[0].result()
    finally:
        ms.utils.remove_build_dir(built.artifact_path)
    if result.error_msg:
        return f"run failed: {result.error_msg}"
    return [float(s) for s in result.run_secs]
