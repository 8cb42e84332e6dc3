"""Sparse or dense? A per-shape cost model calibrated by timing both kernels on this machine.

For a product ``[M, K] @ W[K, N]`` with blocks ``bk x bn`` the sparse kernel's time is close to
linear in the density of stored blocks: ``t(d) = t0 + slope * d``. One build of the dense
kernel (our default schedule) and two of the sparse one (at densities ``LOW`` and ``HIGH`` of
random blocks) fit it; the break-even density is where it meets the dense time. Fits are cached
per (target, shape, block, dtype, epilogue) for the process, so a model with repeated layer
shapes (a transformer) measures each shape once. Targets that do not run here get ``assumed``
break-evens instead (stated as such in the report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvmcompress.passes import _sparse_math as sm

LOW, HIGH = 0.02, 0.3
MARGIN = 0.9  # sparse must be predicted >= 10% faster: measurement noise must not flip it
_FITS: dict[tuple, Fit] = {}


@dataclass(frozen=True)
class Fit:
    """Measured (or assumed) times in ms; ``source`` says which."""

    dense_ms: float
    t0_ms: float
    slope_ms: float
    source: str

    def sparse_ms(self, density: float) -> float:
        return self.t0_ms + self.slope_ms * density

    @property
    def break_even(self) -> float:
        """Sparsity above which the sparse kernel is faster (1.0: never)."""
        if self.slope_ms <= 0:
            return 0.0 if self.t0_ms < self.dense_ms else 1.0
        density = (self.dense_ms - self.t0_ms) / self.slope_ms
        return float(np.clip(1.0 - density, 0.0, 1.0))

    def sparse_wins(self, density: float) -> bool:
        return self.sparse_ms(density) < MARGIN * self.dense_ms


def assumed(block: tuple[int, int], lanes: int) -> Fit:
    """No measurement possible: vector-wide blocks pay from ~60% sparsity, scalar (CSR/N:M)
    blocks from ~85% (what ``benchmarks/bench_sparse.py`` measured on AVX2)."""
    wide = block[0] * block[1] >= lanes
    even = 0.6 if wide else 0.85
    return Fit(1.0, 0.0, 1.0 / (1.0 - even), "assumed")


def _random_bsr(k: int, n: int, block: tuple[int, int], density: float, int8: bool,
                seed: int = 0) -> sm.Bsr:
    rng = np.random.default_rng(seed)
    keep = rng.random((k // block[0], n // block[1])) < density
    w = rng.standard_normal((k, n)).astype(np.float32) * sm.expand(keep, block)
    return sm.to_bsr(w, block, int8)


def _module(m: int, k: int, n: int, relu: bool, bsr: sm.Bsr | None, target) -> tvm.IRModule:
    from tvmcompress.passes._sparse_emit import emit_bsr

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([m, k], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if bsr is None:
                w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
                y = bb.emit(relax.op.matmul(x, relax.const(w)))
                y = bb.emit(relax.op.nn.relu(y)) if relu else y
            else:
                y = emit_bsr(bb, x, bsr, None, relu, target)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.finalize()


def _timer(mod: tvm.IRModule, preset, m: int, k: int):
    from tvmcompress.schedules import build

    executable, _ = build(mod, preset)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((m, k)).astype(np.float32))
    fn = vm["main"]
    fn(x)

    def once(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn(x)
        return (time.perf_counter() - start) * 1e3 / number

    return once


def interleaved(timers: list, rounds: int = 7, budget_ms: float = 2.0) -> list[float]:
    """Fastest round of each timer over ``rounds`` interleaved rounds (a round runs each timer
    for about ``budget_ms``). The minimum, not the median: load from other processes only adds
    time, and one slow round of the dense kernel must not send a layer sparse."""
    numbers = [max(1, int(budget_ms / max(t(1), 1e-3))) for t in timers]
    samples = [[] for _ in timers]
    for _ in range(rounds):
        for t, number, out in zip(timers, numbers, samples, strict=True):
            out.append(t(number))
    return [min(s) for s in samples]


def measure(m: int, k: int, n: int, block: tuple[int, int], int8: bool, relu: bool,
            preset) -> Fit:
    """Fit for this shape on ``preset`` (which must run here), cached per process."""
    key = (preset.name, m, k, n, block, int8, relu)
    if key not in _FITS:
        target = preset.tvm_target
        mods = [_module(m, k, n, relu, None, target)] + [
            _module(m, k, n, relu, _random_bsr(k, n, block, d, int8), target) for d in (LOW, HIGH)]
        dense, low, high = interleaved([_timer(mod, preset, m, k) for mod in mods])
        slope = (high - low) / (HIGH - LOW)
        _FITS[key] = Fit(dense, low - slope * LOW, slope, "measured")
    return _FITS[key]
