"""Where a compiled model's time goes: each kernel's share of a run, calls, time per call and
GFLOP/s, so a user sees which kernels to tune (or which have no good schedule).

The Relax VM calls every kernel through one packed-function call; a VM instrument times
each call (synchronizing the device around it, so GPU kernels are timed whole). The
instrument costs a few microseconds per call, so the kernels' sum is a little above what
``benchmark`` measures; the shares are what matters. FLOPs per kernel are TVM's estimate,
taken when the kernels were built (``BuildInfo.flops``, kept in an export's manifest).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tvmcompress.errors import ConfigError

BUILTINS = "(VM builtins: allocation, shapes)"  # mostly the instrument's own cost per call
SLOW_SHARE = 0.02  # an unscheduled kernel taking more than this share of a run is flagged


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or VM builtin) over a run: calls per run and median milliseconds per run."""

    name: str
    calls: int
    ms: float
    flops: float | None = None  # per call
    note: str = ""

    @property
    def gflops(self) -> float | None:
        if not self.flops or self.ms <= 0:
            return None
        return self.flops * self.calls / self.ms / 1e6


@dataclass
class Profile:
    """Kernels sorted by time, with the whole run's median for reference."""

    kernels: list[KernelTime]
    run_ms: float
    rounds: int
    notes: list[str] = field(default_factory=list)

    @property
    def kernel_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def table(self, top: int | None = None) -> str:
        total = self.kernel_ms or 1.0
        lines = [f"{'kernel':<48} {'calls':>5} {'ms':>8} {'share':>6} {'MFLOP':>9} "
                 f"{'GFLOP/s':>8}  note"]
        for k in self.kernels[:top]:
            mflop = f"{k.flops * k.calls / 1e6:9.1f}" if k.flops else f"{'':>9}"
            gflops = f"{k.gflops:8.1f}" if k.gflops else f"{'':>8}"
            lines.append(f"{k.name[:48]:<48} {k.calls:>5} {k.ms:8.3f} {k.ms / total:6.1%} "
                         f"{mflop} {gflops}  {k.note}".rstrip())
        if top is not None and len(self.kernels) > top:
            rest = self.kernels[top:]
            lines.append(f"{f'({len(rest)} more)':<48} {sum(k.calls for k in rest):>5} "
                         f"{sum(k.ms for k in rest):8.3f} "
                         f"{sum(k.ms for k in rest) / total:6.1%}")
        lines.append(f"kernels {self.kernel_ms:.3f} ms; whole run {self.run_ms:.3f} ms "
                     f"(median of {self.rounds} runs)")
        return "\n".join(lines + [f"warning: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.table()


def profile(runner: Any, tensors: list[Any], flops: Mapping[str, float] | None = None,
            unscheduled: list[str] | tuple[str, ...] = (), tuned: list[str] | tuple = (),
            rounds: int = 5, warmup: int = 2) -> Profile:
    """Time each kernel of ``runner`` (a ``runtime.Runner``) on prepared ``tensors``."""
    from tvm import relax

    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"profile rounds must be an integer >= 1, got {rounds!r}")
    vm = relax.VirtualMachine(runner.library, runner.device)
    main = vm["main"]
    for _ in range(warmup):
        main(*tensors)
    times: dict[str, list[float]] = defaultdict(list)
    sync = (lambda: None) if runner.device.type == "cpu" else runner.device.sync
    vm.set_instrument(call_timer(times, sync))
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        main(*tensors)
        runner.device.sync()
        runs.append((time.perf_counter() - start) * 1e3)
    return Profile(_rows(times, rounds, flops or {}, set(unscheduled), set(tuned)),
                   statistics.median(runs), rounds, _notes(times, unscheduled))


def call_timer(times: dict[str, list[float]], sync=None):
    """A VM instrument appending each call's seconds to ``times[symbol]`` (the VM's builtins
    under ``BUILTINS``); ``sync`` waits for the device around each call."""
    clock = [0.0]

    def instrument(_func, symbol, before, _ret, *_args) -> None:
        if sync is not None:
            sync()
        if symbol.startswith("vm.builtin."):
            symbol = BUILTINS
        if before:
            clock[0] = time.perf_counter()
        else:
            times.setdefault(symbol, []).append(time.perf_counter() - clock[0])

    return instrument


def _rows(times: dict[str, list[float]], rounds: int, flops: Mapping[str, float],
          unscheduled: set[str], tuned: set[str]) -> list[KernelTime]:
    total = sum(sum(t) for t in times.values()) / rounds or 1.0
    rows = []
    for name, samples in times.items():
        calls = len(samples) // rounds
        per_run = [sum(samples[i * calls:(i + 1) * calls]) * 1e3 for i in range(rounds)]
        ms = statistics.median(per_run)
        note = ("UNSCHEDULED" if name in unscheduled and ms / 1e3 / total > SLOW_SHARE
                else "unscheduled" if name in unscheduled
                else "tuned" if name in tuned else "")
        rows.append(KernelTime(name, calls, ms, flops.get(name), note))
    return sorted(rows, key=lambda k: -k.ms)


def _notes(times: Mapping[str, list[float]], unscheduled) -> list[str]:
    slow = [n for n in unscheduled if n in times]
    return [f"{len(slow)} kernel(s) ran with no schedule (compiled as plain loops): "
            f"{', '.join(sorted(slow))}; `tvmcompress tune` can schedule them"] if slow else []
