"""Rank selection of LowRankSplit: per layer (energy, rank, rank_ratio) or for the whole model
(macs_budget), with the ``min_gain`` rule that keeps a layer whole when splitting does not pay.

Returns the report rows (one per matmul/conv2d) and the rewrite plans of the split layers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm

from tvmcompress.errors import ConfigError
from tvmcompress.passes import _lowrank_math as lm
from tvmcompress.passes import _lowrank_plan as lp


def _requested(layer: lp.Layer, opt: lp.Option, config) -> tuple[int | None, str]:
    """The rank asked for ``layer`` in ``opt``'s split, or None and why it stays whole."""
    full, s, step = opt.full, opt.factors.s, config.round_to
    if config.energy is not None:
        return lm.round_rank(lm.rank_for_energy(s, config.energy), step, full), ""
    if config.rank_ratio is not None:
        return lm.round_rank(math.ceil(config.rank_ratio * full), step, full), ""
    if isinstance(config.rank, dict):
        rank = config.rank.get(layer.name, config.rank.get(layer.var))
        if rank is None:
            return None, "not listed in rank"
        if rank > full:
            raise ConfigError(f"LowRankConfig.rank[{layer.name!r}] = {rank} exceeds the full "
                              f"rank {full} of layer {layer.name} ({layer.var}, weight "
                              f"{list(layer.weight.shape)}, {opt.mode} split); use <= {full}")
        return rank, ""
    if config.rank > full:
        return None, f"rank {config.rank} > full rank {full}"
    return config.rank, ""


def _row(layer: lp.Layer, orig: int, **fields: Any) -> dict[str, Any]:
    shape = list(layer.w_shape) if layer.w_shape else "?"
    row = {"layer": layer.name, "var": layer.var, "shape": shape, "mode": "", "rank": "",
           "full_rank": "", "energy": "", "whitened": "", "macs_before": orig,
           "macs_after": orig, "split": False, "reason": ""}
    row.update(fields)
    return row


def _decide(layer: lp.Layer, opts: list[lp.Option], ranks: list[int | None], config):
    """Among the options with a rank, the cheapest; then the min_gain rule."""
    orig = layer.macs()
    tried = [(r * o.per_rank, o, r) for o, r in zip(opts, ranks, strict=True) if r]
    if not tried:
        return _row(layer, orig), None
    cost, opt, rank = min(tried, key=lambda t: t[0])
    row = _row(layer, orig, mode=opt.mode, rank=rank, full_rank=opt.full,
               energy=round(opt.factors.energy(rank), 6), whitened=opt.whitened)
    if cost > config.min_gain * orig:
        row["reason"] = (f"split costs {cost / orig:.0%} of the MACs > min_gain "
                         f"{config.min_gain:.0%}: left whole")
        return row, None
    row.update(macs_after=cost, split=True)
    return row, (opt, rank)


def _per_layer(layer, opts, config):
    asked = [_requested(layer, o, config) for o in opts]
    row, plan = _decide(layer, opts, [r for r, _ in asked], config)
    if not row["reason"] and not plan:
        row["reason"] = "; ".join(why for _, why in asked if why) or "not split"
    return row, plan


def _budget(mod, eligible, config) -> tuple[list[tuple[dict, Any]], dict]:
    """Greedy ranks for the macs_budget of the whole model's matmul+conv MACs; also a
    summary row saying whether the budget was reached."""
    from tvmcompress.report import op_stats

    total = sum(s.macs for s in op_stats(mod).values())
    picks = []
    for layer, opts in eligible:  # per layer, the split keeping most energy at half the MACs
        orig = layer.macs()
        picks.append(max(opts, key=lambda o: o.factors.energy(
            max(1, min(o.full, int(0.5 * orig // o.per_rank))))))
    cands = [lm.Candidate(lm.energy_curve(o.factors.s), o.per_rank, layer.macs(),
                          lp.max_paying_rank(o, layer.macs(), config.min_gain, config.round_to))
             for (layer, _), o in zip(eligible, picks, strict=True)]
    fixed = total - sum(c.orig_macs for c in cands)
    ranks = lm.allocate_budget(cands, config.macs_budget * total - fixed, config.round_to)
    out = []
    for (layer, _), opt, rank in zip(eligible, picks, ranks, strict=True):
        row, plan = _decide(layer, [opt], [rank], config)
        if rank is None:
            row["reason"] = "macs_budget: kept whole (no paying rank, or budget allows it)"
        out.append((row, plan))
    after = fixed + sum(row["macs_after"] for row, _ in out)
    summary = {"layer": "(model)", "macs_before": total, "macs_after": after, "split": "",
               "reason": f"macs_budget {config.macs_budget:.0%}: reached {after / total:.0%}"
               + ("" if after <= config.macs_budget * total else
                  " (unreachable: the smallest paying ranks cost more)")}
    return out, summary


def choose_all(mod: tvm.IRModule, layers: list[lp.Layer], config,
               grams: dict[str, np.ndarray]) -> tuple[list[dict], dict]:
    """Report rows for every layer and ``{call: (mode, first, second)}`` for the split ones."""
    rows: dict[str, dict] = {}
    eligible = []
    for layer in layers:
        if layer.reason is not None:
            rows[layer.name] = _row(layer, layer.macs(), reason=layer.reason)
            continue
        eligible.append((layer, lp.options(layer, config.conv_mode, grams.get(layer.name))))
    if isinstance(config.rank, dict):
        known = {n for x in layers for n in (x.name, x.var)}
        unknown = sorted(set(config.rank) - known)
        if unknown:
            raise ConfigError(f"LowRankConfig.rank names unknown layers {unknown}; layers: "
                              f"{[x.name for x in layers if x.reason is None]}")
    summary = None
    if config.macs_budget is not None:
        decided, summary = _budget(mod, eligible, config)
    else:
        decided = [_per_layer(layer, opts, config) for layer, opts in eligible]
    plans = {}
    for (layer, _), (row, plan) in zip(eligible, decided, strict=True):
        rows[layer.name] = row
        if plan is not None:
            opt, rank = plan
            first, second = lp.split_kernels(opt, rank, layer.weight.shape)
            dtype = layer.weight.dtype
            plans[layer.call] = (opt.mode, first.astype(dtype), second.astype(dtype))
    return [rows[x.name] for x in layers] + ([summary] if summary else []), plans
