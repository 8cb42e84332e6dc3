"""Injective kernels on CPUs (concat, reshape, transpose, pad, standalone elementwise chains):
one parallel loop over the outer dimensions, a vector loop inside."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from tvmcompress.schedules.cpu import common


class Elementwise(common.CPURule):
    """Functions whose blocks all inline into one spatial block."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        infos = common.blocks_after_inline(sch)
        if not infos or len(infos) != 1 or not infos[0].is_injective():
            return False
        common.parallel_vectorize(sch, infos[0].block_rv, common.lanes(target, "float32"),
                                  common.num_cores(target))
        return True
