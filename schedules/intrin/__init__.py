"""Tensor intrinsics of our own (registered with ``tvm.s_tir.TensorIntrin`` on import, so the
default schedules and MetaSchedule can both tensorize with them), and the vector lowerings of
float32 ``erf`` and ``exp`` that replace libm calls on LLVM CPU targets."""

from tvmcompress.schedules.intrin import fast_erf, fast_exp  # noqa: F401  (register lowerings)
