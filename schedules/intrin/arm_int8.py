"""AArch64 ``sdot`` (Armv8.2 dotprod): TVM's ``dot_4x4_i8i8s32_sdot``
(``tvm.s_tir.tensor_intrin.arm_cpu``) re-registered with a register ("local") accumulator,
so the int8 GEMM/conv tiles of ``int8_gemm.py`` keep their sums in registers.
``C[i] += sum_k A[k] * B[i, k]``, 4 int32 lanes x 4 k, s8 x s8 accumulated in int32 (exact)."""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tvmcompress.schedules.intrin.x86_int8 import _desc, name, splat
from tvmcompress.schedules.tvmscript import frames_without_source

DOT_SDOT = "tvmcompress_neon_dot_4x4_s8s8s32_sdot"
SHAPE = ("int8", "int8", 4, 4)


def _impl(scope: str):
    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"),
                splat(A, "int8x4", 4, "int8x16"),
                B.vload([0, 0], dtype="int8x16"), dtype="int32x4")

    return impl


with frames_without_source():
    for _scope in ("global", "local"):
        TensorIntrin.register(name(DOT_SDOT, _scope), _desc("int8", "int8", 4, _scope, 4),
                              _impl(_scope), override=True)
