"""Our tensorized rules as MetaSchedule design spaces, so tuning searches around them.

MetaSchedule's ``ApplyCustomRule`` hands a block annotated ``schedule_rule = NAME`` to the
global function ``s_tir.meta_schedule.<target key>.NAME``, and its other rules leave such a
block alone. Our int8 kernels are tagged by ``int8_pack.py``; without a function of that name
MetaSchedule drops the tag and tiles the block as plain integer loops, never using our AVX2 /
VNNI / sdot intrinsics. Registered here, the function applies the default rule with its
register tile drawn from ``sample_categorical`` decisions (the default tile the likeliest),
so the evolutionary search mutates tile sizes while every candidate stays tensorized.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir

from tvmcompress.schedules.cpu.int8_gemm import Int8Gemm, tile
from tvmcompress.schedules.cpu.int8_pack import RULE as INT8_RULE
from tvmcompress.schedules.intrin.x86_int8 import DOT_S16

logger = logging.getLogger(__name__)
DEFAULT_WEIGHT = 0.5  # probability of the default rule's own choice


def _sampled(sch: s_tir.Schedule, choices: list[int], default: int):
    """An ExprRV over ``choices``: ``default`` with DEFAULT_WEIGHT, the rest evenly. Never
    mixes 1 with larger sizes: a unit loop vanishes under compute-at, so a trace sampled with
    one would not replay with the other (the loops it names would differ)."""
    choices = sorted({c for c in choices if c > 1} | {default}) if default > 1 else []
    if len(choices) <= 1:
        return default
    rest = (1 - DEFAULT_WEIGHT) / (len(choices) - 1)
    return sch.sample_categorical(choices, [DEFAULT_WEIGHT if c == default else rest
                                            for c in choices])


class SampledInt8Gemm(Int8Gemm):
    """``Int8Gemm`` whose register tile (rows x vectors) is a pair of sampled decisions."""

    def tile(self, sch: s_tir.Schedule, rows: int, panels: int, intrin: str):
        default_rows, default_vecs = tile(rows, panels, intrin)
        spare = 16 - (1 if intrin == DOT_S16 else 3)
        row_choices = [d for d in range(1, min(rows, spare - 1) + 1) if rows % d == 0]
        vec_choices = [d for d in range(1, min(panels, 8 if rows == 1 else 4) + 1)
                       if panels % d == 0]
        return (_sampled(sch, row_choices, default_rows),
                _sampled(sch, vec_choices, default_vecs))


def _int8_space(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[s_tir.Schedule]:
    target = tvm.target.Target.current(allow_none=False)
    trial = sch.copy()
    try:
        ok = SampledInt8Gemm().schedule(trial, target)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        logger.debug("int8 design space did not apply: %s", err)
        ok = False
    if not ok:  # leave it to MetaSchedule's own rules
        sch.unannotate(block, "schedule_rule")
        return [sch]
    root = trial.get_sblock("root")
    for placed in [root, *trial.get_child_blocks(root)]:  # MetaSchedule's rules: hands off
        trial.annotate(placed, "schedule_rule", "None")
    return [trial]


def register() -> None:
    """Register the design spaces for every CPU target key (idempotent)."""
    for key in ("cpu",):
        name = f"s_tir.meta_schedule.{key}.{INT8_RULE}"
        if tvm.get_global_func(name, allow_missing=True) is None:
            tvm.register_global_func(name, _int8_space)

