"""Which units each group keeps: scores from the coupling's members, then the ratio rules."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm

from tvmcompress.errors import ConfigError
from tvmcompress.passes import _prune_importance as imp
from tvmcompress.passes._prune_taylor import NoGradient, gradient_sums, taylor_slices
from tvmcompress.passes.dependency import Coupling, Group


@dataclass
class Plan:
    """Decisions per group: kept unit indices (group-local), or the reason nothing was cut."""

    mod: tvm.IRModule  # the (canonicalized) module the plan refers to
    coupling: Coupling
    keep: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # model-wide decisions (criterion fallback)

    @property
    def removed(self) -> np.ndarray:
        """Resolved labels of every removed unit."""
        cut = [np.delete(g.units, self.keep[g.name]) for g in self.coupling.groups
               if g.name in self.keep]
        return np.concatenate(cut) if cut else np.zeros(0, np.int64)

    def kept_channels(self, layer: str) -> np.ndarray:
        """Output channel indices ``layer`` keeps (all when its group is untouched)."""
        group = self.coupling.group(layer)
        units = group.channels[layer]
        if group.name not in self.keep:
            return np.arange(len(units))
        return np.nonzero(np.isin(units, group.units[self.keep[group.name]]))[0]


def _slices(coupling: Coupling, group: Group, ops: tuple[str, ...] | None = None):
    local = {int(u): i for i, u in enumerate(group.units)}
    for m in coupling.members:
        if m.axis is None or (ops and m.call.op.name not in ops):
            continue
        line = m.labels[tuple(slice(None) if a == m.axis else 0 for a in range(m.labels.ndim))]
        unit = np.array([local.get(int(u), -1) for u in line])
        if (unit >= 0).any():
            yield m.call.args[m.arg].value.numpy(), m.axis, unit


def scores(coupling: Coupling, groups: list[Group], criterion: str,
           activations: dict | None = None) -> dict[str, np.ndarray]:
    """Importance of each unit of ``groups`` by ``criterion`` (l1, l2, bn, activation, taylor);
    ``activations``: :func:`collect_activations` (activation) or ``gradient_sums`` (taylor)."""
    out = {}
    for g in groups:
        n = len(g.units)
        if criterion in ("l1", "l2"):
            out[g.name] = imp.magnitude(_slices(coupling, g), n, 1 if criterion == "l1" else 2)
        elif criterion == "bn":
            s = imp.scale_factor(_slices(coupling, g, ("relax.multiply",)), n)
            out[g.name] = s if not np.isnan(s).any() else imp.magnitude(_slices(coupling, g), n, 2)
        elif criterion == "taylor":
            out[g.name] = imp.taylor(taylor_slices(coupling, g, activations or {}), n)
        else:
            out[g.name] = imp.activation(_activation_slices(coupling, g, activations or {}), n)
    return out


def _activation_slices(coupling: Coupling, group: Group, activations: dict):
    local = {int(u): i for i, u in enumerate(group.units)}
    for call, value in activations.items():
        labels = coupling.outputs[call]
        axis = next(a for a in range(labels.ndim) if labels.shape[a] > 1)
        line = labels[tuple(slice(None) if a == axis else 0 for a in range(labels.ndim))]
        unit = np.array([local.get(int(u), -1) for u in line])
        if (unit >= 0).any():
            yield value, axis, unit


def collect_activations(mod: tvm.IRModule, coupling: Coupling, data: Any) -> dict:
    """Mean over calibration samples of each channel-carrying op output (|x| averaged later):
    ``main`` is compiled for the host with those outputs added."""
    from tvmcompress.passes.calibrate import check_calibration, load_calibration, run_with_outputs

    calls = [c for c, v in coupling.outputs.items() if len(_vary(v)) == 1
             and c.op.name in ("relax.nn.relu", "relax.clip", "relax.nn.gelu", "relax.nn.silu",
                               "relax.minimum", "relax.multiply", "relax.add")]
    func = mod["main"]
    var_of = {b.value: b.var for blk in func.body.blocks for b in blk.bindings}
    arrays = check_calibration(load_calibration(data), list(func.params))
    batches = list(run_with_outputs(mod, [var_of[c] for c in calls], arrays))
    means = [sum(np.abs(b[j]) for b in batches) / len(batches) for j in range(len(calls))]
    return dict(zip(calls, means, strict=True))


def criterion_data(mod: tvm.IRModule, coupling: Coupling, criterion: str, config: Any,
                   notes: list[str]) -> tuple[str, dict | None]:
    """Calibration statistics the criterion needs; a model Relax cannot differentiate falls
    back from taylor to activation (same calibration data), with a note saying why."""
    if criterion == "taylor":
        try:
            return criterion, gradient_sums(mod, coupling, config.calibration, config.targets)
        except NoGradient as err:
            notes.append(f"taylor criterion unavailable ({str(err).splitlines()[0][:160]}); "
                         "ranked by mean |activation| instead")
            criterion = "activation"
    if criterion == "activation":
        return criterion, collect_activations(mod, coupling, config.calibration)
    return criterion, None


def _vary(labels):
    from tvmcompress.passes.dependency import varying_axis

    return varying_axis(labels)


def keep_counts(groups: list[Group], unit_scores: dict[str, np.ndarray], ratio: Any,
                round_to: int, min_channels: int) -> dict[str, int]:
    """Units kept per group: one global ranking (float ratio) or a ratio per layer (dict)."""
    min_keep = {g.name: min(len(g.units), max(1, math.ceil(min_channels / g.width)))
                for g in groups}
    if isinstance(ratio, dict):
        keep = {}
        for g in groups:
            r = next((ratio[n] for n in g.layers if n in ratio), 0.0)
            keep[g.name] = len(g.units) - round(r * len(g.units))
    else:
        keep = imp.global_keep(unit_scores, ratio, min_keep)
    return {g.name: imp.round_keep(keep[g.name], len(g.units),
                                   round_to if g.width == 1 else 1, min_keep[g.name])
            for g in groups}


def explicit_keep(coupling: Coupling, remove: dict[str, Any]) -> dict[str, np.ndarray]:
    """Kept unit indices from ``{layer: output channel indices to remove}``; layers of one
    group (residual partners) add up."""
    cut: dict[str, set[int]] = {}
    for layer, channels in remove.items():
        try:
            group = coupling.group(layer)
        except KeyError as err:
            raise ConfigError(f"PruneConfig.remove names {err.args[0]}") from err
        if group.reason:
            raise ConfigError(f"PruneConfig.remove[{layer!r}]: its channels cannot be pruned "
                              f"({group.reason}); remove channels of another layer")
        index = np.asarray(channels, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(group.channels[layer])):
            raise ConfigError(f"PruneConfig.remove[{layer!r}] = {list(channels)}: channel "
                              f"indices must be in [0, {len(group.channels[layer])})")
        units = group.channels[layer][index]
        cut.setdefault(group.name, set()).update(int(u) for u in units)
    keep = {}
    for group in coupling.groups:
        if group.name in cut:
            keep[group.name] = np.nonzero(~np.isin(group.units, list(cut[group.name])))[0]
            if not len(keep[group.name]):
                raise ConfigError(f"PruneConfig.remove removes every channel of group "
                                  f"{group.name} ({', '.join(group.layers)}); keep at least one")
    return keep
