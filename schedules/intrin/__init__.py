"""Tensor intrinsics of our own (registered with ``tvm.s_tir.TensorIntrin`` on import, so the
default schedules and MetaSchedule can both tensorize with them)."""

from tvmcompress.schedules.intrin import fast_erf  # noqa: F401  (registers erf lowering)
