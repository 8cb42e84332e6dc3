"""Importance of pruning units and which to keep: pure numpy, no IR.

A *slice list* describes where a group's units live in constant tensors: ``(array, axis,
unit_of_index)`` with ``unit_of_index[i]`` the group-local unit (0..n-1) that index ``i`` of
``axis`` belongs to, or -1 when that index belongs to another group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Slices = Iterable[tuple[np.ndarray, int, np.ndarray]]


def magnitude(slices: Slices, n_units: int, p: int) -> np.ndarray:
    """L1 (``p=1``: sum of |w|) or L2 (``p=2``: root of the sum of w^2) of each unit's slices,
    summed over every member of the group (weights, biases, consumers' input slices)."""
    scores = np.zeros(n_units, dtype=np.float64)
    for array, axis, unit in slices:
        rows = np.abs(np.moveaxis(np.asarray(array, np.float64), axis, 0))
        rows = rows.reshape(rows.shape[0], -1)
        per = rows.sum(1) if p == 1 else np.square(rows).sum(1)
        ok = unit >= 0
        np.add.at(scores, unit[ok], per[ok])
    return scores if p == 1 else np.sqrt(scores)


def _mean_abs(slices: Iterable[tuple[np.ndarray, int, np.ndarray]],
              n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum over slices of each unit's mean |value| along its axis, and how many slices had it."""
    total, count = np.zeros(n_units), np.zeros(n_units)
    for array, axis, unit in slices:
        rows = np.abs(np.moveaxis(np.asarray(array, np.float64), axis, 0)).reshape(
            array.shape[axis], -1).mean(1)
        ok = unit >= 0
        np.add.at(total, unit[ok], rows[ok])
        np.add.at(count, unit[ok], 1)
    return total, count


def scale_factor(slices: Slices, n_units: int) -> np.ndarray:
    """Network slimming: mean |gamma| of per-channel multiplies (BatchNorm scales) per unit."""
    total, count = _mean_abs(slices, n_units)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def activation(values: Iterable[tuple[np.ndarray, int, np.ndarray]], n_units: int) -> np.ndarray:
    """Mean |activation| per unit; ``values`` as slices, over calibration outputs."""
    total, count = _mean_abs(values, n_units)
    return total / np.maximum(count, 1)


def taylor(contributions: Slices, n_units: int) -> np.ndarray:
    """First-order Taylor: per member, |sum of w * dL/dw over the unit's slice| (``contributions``
    as slices of ``w * dL/dw`` summed over calibration samples), summed over the members."""
    scores = np.zeros(n_units, dtype=np.float64)
    for array, axis, unit in contributions:
        rows = np.moveaxis(np.asarray(array, np.float64), axis, 0)
        per = rows.reshape(rows.shape[0], -1).sum(1)
        signed = np.zeros(n_units)
        ok = unit >= 0
        np.add.at(signed, unit[ok], per[ok])
        scores += np.abs(signed)
    return scores


def normalize(scores: np.ndarray) -> np.ndarray:
    """Scores over the group mean, so layers of different scale rank against each other."""
    mean = float(np.mean(scores)) if scores.size else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)


def round_keep(keep: int, total: int, round_to: int, min_keep: int) -> int:
    """``keep`` rounded to the nearest multiple of ``round_to`` (ties up), never below
    ``min_keep`` (itself rounded up to a multiple) nor above ``total``; a total below
    ``round_to`` is not rounded."""
    min_keep = max(min_keep, 1)
    if round_to > 1 and total >= round_to:
        keep = max(math.floor(keep / round_to + 0.5), math.ceil(min_keep / round_to)) * round_to
    return int(min(total, max(keep, min_keep)))


def top_units(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` highest scores, ascending (stable on ties: lower index wins)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])


def global_keep(scores: dict[str, np.ndarray], ratio: float,
                min_keep: dict[str, int]) -> dict[str, int]:
    """How many units each group keeps when the ``ratio`` of all units with the lowest
    normalized scores go, never leaving a group below its ``min_keep``."""
    names = [n for n in scores for _ in range(len(scores[n]))]
    flat = np.concatenate([normalize(scores[n]) for n in scores]) if scores else np.zeros(0)
    budget = round(ratio * flat.size)
    keep = {n: len(s) for n, s in scores.items()}
    for i in np.argsort(flat, kind="stable"):
        if budget == 0:
            break
        if keep[names[i]] > min_keep[names[i]]:
            keep[names[i]] -= 1
            budget -= 1
    return keep
