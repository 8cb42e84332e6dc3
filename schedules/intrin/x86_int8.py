"""AVX2 integer dot products, 8 int32 outputs per instruction group (one ymm register).

TVM 0.27 ships u8 x s8 intrinsics for AVX-512/VNNI only. These are their AVX2 versions:

- ``DOT_U8S8``: ``C[i] += sum_k A[k] * B[i, k]`` over 4 k, u8 x s8 via ``vpmaddubsw`` (pairs
  summed into int16, SATURATING) then ``vpmaddwd`` by ones (int16 pairs into int32). Exact only
  while ``|2 * 255 * w| <= 32767``, i.e. weights in [-64, 64]; the packer checks the constant
  weights at compile time and picks this one only then.
- ``DOT_S16``: the same over 2 k on int16 operands via ``vpmaddwd`` alone: int16 x int16 pairs
  summed into int32 cannot overflow for 8/9-bit values, so it is exact for any int8/uint8
  activation and any weight in [-255, 255] (what QDQ folding can produce), at half the MACs
  per instruction.

``A`` (the activation, broadcast to all lanes) and ``B`` (a packed weight panel, ``[8, k]``
contiguous) are loaded as whole vectors; ``C`` lives in registers ("local"), one variant per
accumulator scope. AVX-512 targets get the same 16-lane kernels TVM ships for them
(``DOT_VNNI``: exact for all u8 x s8; ``DOT_AVX512``: the same int16 limit as ``DOT_U8S8``).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tvmcompress.schedules.tvmscript import frames_without_source

LANES = 8
DOT_U8S8 = "tvmcompress_avx2_dot_8x4_u8s8s32"
DOT_S16 = "tvmcompress_avx2_dot_8x2_s16s16s32"
DOT_VNNI = "tvmcompress_avx512_dot_16x4_vnni"
DOT_AVX512 = "tvmcompress_avx512_dot_16x4_u8s8s32"
# (A dtype, B dtype, k per intrinsic, output lanes) for each
SHAPES = {DOT_U8S8: ("uint8", "int8", 4, 8), DOT_S16: ("int16", "int16", 2, 8),
          DOT_VNNI: ("uint8", "int8", 4, 16), DOT_AVX512: ("uint8", "int8", 4, 16)}


def _desc(a_dtype: str, b_dtype: str, k: int, scope: str, lanes: int = LANES):
    """``C[i] += sum_j A[j] * B[i, j]`` (the TIR a tensorized block must match)."""
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (k,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, k), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i, j in T.grid(lanes, k):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


def splat(A, group: str, lanes: int, dtype: str):
    """``A``'s k-group (e.g. 4 bytes as one int32) broadcast to every lane, as ``dtype``.
    An expression, not a TVMScript variable: a variable becomes an ``alloc_local``, which
    TVM 0.27 lowers on CPUs to a ``TVMBackendAllocWorkspace`` per tile, and those calls
    serialize the threads (the int8 GEMM ran slower on 2 threads than on 1)."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], group), dtype="int32"), lanes),
                         dtype=dtype)


def _impl_u8s8(scope: str):
    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (LANES, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:4], B[0:LANES, 0:4])
            T.writes(C[0:LANES])
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                    splat(A, "uint8x4", LANES, "uint8x32"),
                    B.vload([0, 0], dtype="int8x32"), dtype="int16x16"),
                T.int16x16(1), dtype="int32x8")

    return impl


def _impl_s16(scope: str):
    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int16", offset_factor=1)
        B = T.match_buffer(b, (LANES, 2), "int16", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:2], B[0:LANES, 0:2])
            T.writes(C[0:LANES])
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                splat(A, "int16x2", LANES, "int16x16"),
                B.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    return impl


def _impl_avx512(scope: str, vnni: bool):
    """TVM's AVX-512 sequences (``tvm.s_tir.tensor_intrin.x86``: ``vpdpbusd``, or
    ``vpmaddubsw`` + ``vpmaddwd``), with a register ("local") accumulator allowed."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            if vnni:
                C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                    C.vload([0], dtype="int32x16"),  # LLVM 17+: byte-vector operands
                    splat(A, "uint8x4", 16, "int8x64"),
                    B.vload([0, 0], dtype="int8x64"), dtype="int32x16")
            else:
                C[T.ramp(T.int32(0), 1, 16)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddubs.w.512"),
                        splat(A, "uint8x4", 16, "uint8x64"),
                        B.vload([0, 0], dtype="int8x64"), dtype="int16x32"),
                    T.int16x32(1), dtype="int32x16")

    return impl


def name(intrin: str, scope: str) -> str:
    """Registered name of ``intrin`` accumulating into a ``scope`` buffer."""
    return intrin if scope == "global" else f"{intrin}_{scope}"


with frames_without_source():
    for _scope in ("global", "local"):
        TensorIntrin.register(name(DOT_U8S8, _scope), _desc("uint8", "int8", 4, _scope),
                              _impl_u8s8(_scope), override=True)
        TensorIntrin.register(name(DOT_S16, _scope), _desc("int16", "int16", 2, _scope),
                              _impl_s16(_scope), override=True)
        for _intrin, _vnni in ((DOT_VNNI, True), (DOT_AVX512, False)):
            TensorIntrin.register(name(_intrin, _scope), _desc("uint8", "int8", 4, _scope, 16),
                                  _impl_avx512(_scope, _vnni), override=True)
