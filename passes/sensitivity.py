"""Pruning sensitivity: prune each channel group alone at several ratios and measure the drift.

Each (group, ratio) is pruned by :class:`PruneStructured`, compiled for the host and run on the
given inputs; the drift is the cosine similarity and max abs error of every output against the
unpruned module (and, given ``metric(outputs) -> float``, the metric). ``ratio_schedule`` turns
the table into per-layer ratios that fit a MACs budget, cheapest drift per MAC saved first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from tvmcompress.config import CompressConfig
from tvmcompress.errors import ConfigError
from tvmcompress.passes import run_passes
from tvmcompress.passes.prune_structured import PruneConfig, plan_pruning

logger = logging.getLogger(__name__)


@dataclass
class SensitivityRow:
    layer: str
    ratio: float
    units: str          # kept/total units of the group
    macs: float         # model MACs after / before
    cosine: float
    max_abs_err: float
    metric: float | None = None


@dataclass
class Sensitivity:
    """Rows per (group, ratio); ``base_metric`` is the unpruned model's metric."""

    rows: list[SensitivityRow] = field(default_factory=list)
    base_metric: float | None = None

    def table(self) -> str:
        head = f"{'layer':<12}{'ratio':>6}{'units':>10}{'MACs':>8}{'cosine':>10}{'max abs':>10}"
        lines = [head + ("  metric" if self.base_metric is not None else "")]
        for r in self.rows:
            line = (f"{r.layer:<12}{r.ratio:>6.2f}{r.units:>10}{r.macs:>8.3f}{r.cosine:>10.5f}"
                    f"{r.max_abs_err:>10.3g}")
            lines.append(line + (f"  {r.metric:.4f}" if r.metric is not None else ""))
        if self.base_metric is not None:
            lines.append(f"unpruned metric {self.base_metric:.4f}")
        return "\n".join(lines)


def _runner(mod: tvm.IRModule) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    from tvmcompress.schedules import build
    from tvmcompress.targets import resolve_target

    executable, _ = build(mod, resolve_target("host"))
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(arrays):
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays])
        return [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]

    return run


def _macs(mod: tvm.IRModule) -> int:
    from tvmcompress.report import op_stats

    return sum(s.macs for s in op_stats(mod).values())


def _drift(ref: list[np.ndarray], out: list[np.ndarray]) -> tuple[float, float]:
    from tvmcompress.reference import fidelity

    fids = [fidelity(a, b) for a, b in zip(ref, out, strict=True)]
    return min(f["cosine"] for f in fids), max(f["max_abs_err"] for f in fids)


def sensitivity(model: Any, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                ratios: Sequence[float] = (0.25, 0.5, 0.75), criterion: str = "l2",
                metric: Callable[[list[np.ndarray]], float] | None = None,
                round_to: int = 1, verbose: bool = True) -> Sensitivity:
    """Prune each prunable group alone at each ratio; drift of the outputs on ``inputs``.

    ``model``: a ``tc.Model`` or a Relax IRModule. ``inputs``: by name or in parameter order,
    at the model's static shapes. ``verbose`` prints the table.
    """
    mod = relax.transform.FoldConstant()(getattr(model, "mod", model))
    params = mod["main"].params
    arrays = ([inputs[p.name] for p in params] if isinstance(inputs, Mapping) else list(inputs))
    ref = _runner(mod)(arrays)
    base_macs = _macs(mod)
    plan = plan_pruning(mod, PruneConfig(ratio=0.0, protect_first=False))
    groups = [g for g in plan.coupling.groups if g.prunable]
    if not groups:
        raise ConfigError("sensitivity: the model has no prunable channel group ("
                          + "; ".join(f"{g.name}: {g.reason}" for g in plan.coupling.groups)
                          + ")")
    result = Sensitivity(base_metric=metric(ref) if metric else None)
    for g in groups:
        for ratio in ratios:
            cfg = PruneConfig(ratio={g.name: ratio}, criterion=criterion, round_to=round_to,
                              min_channels=1, protect_first=False)
            pruned, log = run_passes(mod, CompressConfig(passes=[cfg]))
            row = next(r for r in log if r["layer"] == g.name)
            out = _runner(pruned)(arrays)
            cosine, err = _drift(ref, out)
            result.rows.append(SensitivityRow(
                g.name, ratio, f"{row['after']}/{row['before']}", _macs(pruned) / base_macs,
                cosine, err, metric(out) if metric else None))
    if verbose:
        print(result.table())
    return result


def ratio_schedule(sens: Sensitivity, budget: float, use_metric: bool = False) -> dict[str, float]:
    """Per-layer ratios whose estimated MACs are at most ``budget`` x the unpruned model's.

    Greedy: repeatedly raise the layer whose next ratio costs the least drift (1 - cosine, or
    the metric drop) per MAC saved. Savings of different layers are added, which slightly
    overestimates (a layer's input and output may both shrink); warns when the budget is out
    of reach and returns the largest ratios then.
    """
    if not 0 < budget <= 1:
        raise ConfigError(f"ratio_schedule budget must be in (0, 1] (fraction of MACs), got "
                          f"{budget}")
    by_layer: dict[str, list[SensitivityRow]] = {}
    for r in sorted(sens.rows, key=lambda r: r.ratio):
        by_layer.setdefault(r.layer, []).append(r)

    def cost(r: SensitivityRow | None) -> tuple[float, float]:
        if r is None:
            return 0.0, 0.0
        drift = (sens.base_metric - r.metric) if use_metric else 1 - r.cosine
        return drift, 1 - r.macs

    step = dict.fromkeys(by_layer, -1)
    saved = 0.0
    while 1 - saved > budget + 1e-9:
        options = []
        for layer, rows in by_layer.items():
            if step[layer] + 1 < len(rows):
                now = rows[step[layer]] if step[layer] >= 0 else None
                d0, s0 = cost(now)
                d1, s1 = cost(rows[step[layer] + 1])
                options.append(((d1 - d0) / max(s1 - s0, 1e-12), layer, s1 - s0))
        if not options:
            logger.warning("ratio_schedule: budget %.3f out of reach (best %.3f)", budget,
                           1 - saved)
            break
        _, layer, gain = min(options)
        step[layer] += 1
        saved += gain
    return {layer: by_layer[layer][i].ratio for layer, i in step.items() if i >= 0}
