"""Structured pruning: remove whole channels, FFN neurons and attention heads from ``main``.

The dependency analysis (``dependency.py``) groups every constant slice that must shrink with a
channel (conv out/in channels, biases, per-channel scales, residual partners, concat offsets,
depthwise convs, flatten features, Q/K/V/output head slices). Units are ranked per group by a
criterion and cut by a global ratio (ranked across groups after normalizing each group by its
mean) or per-layer ratios; tensors really shrink, so every dense kernel gets faster. The model's
inputs and outputs keep their shapes: groups that reach them are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tvm

from tvmcompress.config import PassConfig, register_pass
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _prune_plan as pp
from tvmcompress.passes._prune_rewrite import remove_units
from tvmcompress.passes.dependency import analyze, canonicalize
from tvmcompress.passes.record import record

CRITERIA = ("l1", "l2", "bn", "activation", "taylor")
NAME = "PruneStructured"


@dataclasses.dataclass(frozen=True)
class PruneConfig(PassConfig):
    """Set ``ratio`` (float: global; dict: per layer) or ``remove`` (explicit channels).

    Parameters
    ----------
    ratio
        Fraction [0, 1) of prunable units (channels, neurons, heads) removed, ranked across all
        groups; or ``{layer: fraction}`` (layers named as in the report: conv2d3, matmul1).
    criterion
        ``l2``/``l1`` (weight magnitude over the whole group), ``bn`` (per-channel scale
        factors, falls back to l2 where there are none), ``activation`` (mean |activation| on
        ``calibration``).
    round_to
        Channels kept per group are rounded to the nearest multiple (not for heads).
    min_channels
        No group keeps fewer channels than this.
    exclude
        Layer names whose groups are never pruned.
    protect_first
        Leave the group of the first conv (the stem) whole.
    remove
        ``{layer: output channel indices}`` to remove exactly (with their coupled slices).
    calibration
        Inputs by name (samples on axis 0) for ``activation``/``taylor``; not serialized.
    targets
        ``taylor`` only: ``{output name: array}`` (samples on axis 0) for the loss
        ``0.5 * ||y - t||^2``; default: the label-free ``0.5 * ||y||^2``. Not serialized.
    """

    ratio: float | dict[str, float] | None = None
    criterion: str = "l2"
    round_to: int = 8
    min_channels: int = 8
    exclude: tuple[str, ...] = ()
    protect_first: bool = True
    remove: dict[str, tuple[int, ...]] | None = None
    calibration: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False, repr=False)
    targets: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.remove is not None:
            if not isinstance(self.remove, Mapping):
                raise ConfigError("PruneConfig.remove must be {layer: channel indices}, got "
                                  f"{type(self.remove).__name__}")
            object.__setattr__(self, "remove", {k: tuple(int(c) for c in v)
                                                for k, v in self.remove.items()})
        if (self.ratio is None) == (self.remove is None):
            raise ConfigError("PruneConfig: set exactly one of ratio (e.g. ratio=0.3) and "
                              f"remove, got ratio={self.ratio!r}, remove={self.remove!r}")
        ratios = self.ratio.items() if isinstance(self.ratio, dict) else [("", self.ratio)]
        for key, r in ratios if self.ratio is not None else []:
            if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
                field = f"ratio[{key!r}]" if key else "ratio"
                raise ConfigError(f"PruneConfig.{field} must be in [0, 1) (the fraction of "
                                  f"channels removed), got {r!r}")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"PruneConfig.criterion must be one of {CRITERIA}, got "
                              f"{self.criterion!r}")
        if self.criterion in ("activation", "taylor") and self.calibration is None:
            raise ConfigError(f"PruneConfig.criterion={self.criterion!r} needs calibration= "
                              "({input name: array with samples on axis 0})")
        if self.targets is not None and self.criterion != "taylor":
            raise ConfigError(f"PruneConfig.targets is only used by criterion='taylor', got "
                              f"criterion={self.criterion!r}")
        for name in ("round_to", "min_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PruneConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["data"]["calibration"] = None  # arrays do not belong in JSON manifests
        data["data"]["targets"] = None
        return data


def _eligible(coupling, config: PruneConfig) -> tuple[list, dict[str, str]]:
    """Groups that may be cut, and why each other group is left alone."""
    known = [n for g in coupling.groups for n in g.layers]
    names = list(config.exclude) + list(config.ratio if isinstance(config.ratio, dict) else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"PruneConfig names layers {unknown} that produce no channel group; "
                          f"layers: {', '.join(known) or '(none)'}")
    skipped = {}
    first = coupling.group("conv2d0").name if "conv2d0" in known else None
    for g in coupling.groups:
        if g.reason:
            skipped[g.name] = f"unsafe: {g.reason}"
        elif any(n in config.exclude for n in g.layers):
            skipped[g.name] = "excluded"
        elif config.protect_first and g.name == first:
            skipped[g.name] = "protected (first layer)"
    return [g for g in coupling.groups if g.name not in skipped], skipped


def plan_pruning(mod: tvm.IRModule, config: PruneConfig) -> pp.Plan:
    """What ``PruneStructured`` will cut from ``mod``: kept units per group, skip reasons.

    ``plan.kept_channels(layer)`` gives each layer's kept output channel indices, e.g. to load
    the pruned weights back into a smaller PyTorch model for fine-tuning.
    """
    mod = canonicalize(mod)
    coupling = analyze(mod)
    groups, skipped = _eligible(coupling, config)
    plan = pp.Plan(mod, coupling, skipped=skipped)
    if config.remove is not None:
        plan.keep = pp.explicit_keep(coupling, config.remove)  # explicit: exclusions yield
        plan.skipped = {k: v for k, v in skipped.items() if k not in plan.keep}
        return plan
    criterion, data = (pp.criterion_data(mod, coupling, config.criterion, config, plan.notes)
                       if groups else (config.criterion, None))
    unit_scores = pp.scores(coupling, groups, criterion, data)
    counts = pp.keep_counts(groups, unit_scores, config.ratio, config.round_to,
                            config.min_channels)
    for g in groups:
        if counts[g.name] < len(g.units):
            plan.keep[g.name] = pp.imp.top_units(unit_scores[g.name], counts[g.name])
        else:
            plan.skipped[g.name] = "ratio/rounding leaves every unit"
    return plan


def _record(plan: pp.Plan, before: tvm.IRModule, after: tvm.IRModule) -> None:
    from tvmcompress.report import op_stats

    for note in plan.notes:
        record(NAME, layer="(criterion)", note=note)
    for g in plan.coupling.groups:
        kept = len(plan.keep.get(g.name, g.units))
        unit = "heads" if g.width > 1 else "channels"
        record(NAME, layer=g.name, coupled=",".join(g.layers), unit=unit,
               before=len(g.units), after=kept,
               note=plan.skipped.get(g.name, "pruned" if g.name in plan.keep else "untouched"))
    if not plan.keep:
        why = "no prunable group" if not plan.skipped else "every group skipped (see rows)"
        record(NAME, layer="(model)", note=f"nothing pruned: {why}")
        return
    a, b = op_stats(before), op_stats(after)
    macs = [sum(s.macs for s in x.values()) for x in (a, b)]
    params = [sum(s.params for s in x.values()) for x in (a, b)]
    record(NAME, layer="(model)", before=f"{macs[0]:,} MACs / {params[0]:,} params",
           after=f"{macs[1]:,} MACs / {params[1]:,} params",
           note=f"MACs x{macs[1] / max(macs[0], 1):.3f}")


@register_pass(PruneConfig)
def prune_structured(config: PruneConfig) -> tvm.transform.Pass:
    """The PruneStructured pass for ``config`` (see :class:`PruneConfig`)."""

    @tvm.transform.module_pass(opt_level=0, name=NAME)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        plan = plan_pruning(mod, config)
        out = remove_units(plan.mod, plan.coupling, plan.removed) if plan.keep else mod
        _record(plan, mod, out)
        return out

    return _pass


__all__ = ["CRITERIA", "PruneConfig", "plan_pruning", "prune_structured"]
