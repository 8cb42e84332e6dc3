"""Guarded: a schedule rule that raises is a rule that does not apply.

Rules (ours and dlight's) assume shapes they were written for; dlight's CPU GEMV rule, for
one, asserts on some MobileNetV2 kernels. One rule's failure must not fail the compile: the
kernel goes to the next rule, or stays unscheduled and the report lists it.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

logger = logging.getLogger(__name__)


class Guarded(ScheduleRule):
    """Wrap ``rule`` so that an exception in ``apply`` means "not mine"."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool
              ) -> s_tir.Schedule | list[s_tir.Schedule] | None:
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as err:  # any failure: the next rule gets the kernel
            logger.info("schedule rule %s failed on a kernel (%s: %s); trying the next rule",
                        type(self.rule).__name__, type(err).__name__, err)
            return None
