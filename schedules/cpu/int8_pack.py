"""Pre-pack constant integer weights of ``matmul``/``conv2d`` (int8/uint8 activations, int32
accumulation) for the tensorized int8 kernels (``int8_gemm.py``), at the Relax level.

``W[K, N] -> Wp[N/8, K/r, 8, r]`` (conv: ``W[O, I, KH, KW] -> Wp[O/8, I/r, KH, KW, 8, r]``):
one intrinsic call reads an ``8 x r`` block, contiguous. ``r`` and the operand types come from
the weights, known here at compile time: ``r = 4``, u8 x s8 (``vpmaddubsw``) when every weight
is in [-64, 64] so its int16 pair sums cannot saturate; else ``r = 2``, int16 x int16
(``vpmaddwd``), exact for any 8/9-bit operands. int8 activations on the u8 path are shifted by
+128 and ``128 * sum(W)`` is subtracted again in int32 (exact). AVX-512 targets get
16-lane blocks (``vpdpbusd`` with VNNI, exact for all 8-bit weights), AArch64 with dotprod
4-lane ``sdot`` blocks (s8 x s8).

Convs whose channels fill blocks of the intrinsic's lanes (= the fp32 vector, the NCHWc
block) are left to ``nchwc.py`` on the first run: ConvertLayout moves them to NCHW{b}c with
the float convs, and ``nchwc_conv`` packs them there (read ``[N, C/b, H, W, b]``, write
NCHW{b}c; grouped/depthwise ones become NCHWc kernels with int32 sums). The second run packs
the rest in NCHW: inputs padded and moved to ``[N, C/r, H, W, r]`` (``r`` reduction values
adjacent) by injective Relax ops, grouped convs as plain TE kernels for the generic rule.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.cpu.pack_conv import conv_output_size, unpack_np
from tvmcompress.schedules.intrin.arm_int8 import DOT_SDOT
from tvmcompress.schedules.intrin.arm_int8 import SHAPE as _SDOT
from tvmcompress.schedules.intrin.x86_int8 import (
    DOT_AVX512,
    DOT_S16,
    DOT_U8S8,
    DOT_VNNI,
)
from tvmcompress.schedules.intrin.x86_int8 import SHAPES as _X86

SHAPES = {**_X86, DOT_SDOT: _SDOT}

RULE = "tvmcompress.int8_gemm"
_INTS = ("int8", "uint8")


def choose_intrin(weight: np.ndarray, features: tuple[str, ...] = ()) -> str | None:
    """The fastest intrinsic that computes ``x @ weight`` exactly on a CPU with ``features``
    (None: weights beyond int16, or no kernel for them on this CPU)."""
    if "dotprod" in features:
        return DOT_SDOT if weight.min() >= -128 and weight.max() <= 127 else None
    if "avx2" not in features:
        return None
    if weight.min() >= -128 and weight.max() <= 127 and "avx512vnni" in features:
        return DOT_VNNI  # vpdpbusd accumulates u8 x s8 in int32: no int16 step
    if weight.min() >= -64 and weight.max() <= 64:
        return DOT_AVX512 if "avx512bw" in features else DOT_U8S8
    if weight.min() >= -(2**15) and weight.max() < 2**15:
        return DOT_S16
    return None


def _fitting(w: np.ndarray, features: tuple[str, ...], is_conv: bool) -> str | None:
    """``choose_intrin``, narrowed to AVX2's 8 output lanes when the output channels (conv
    ``O``, matmul ``N``) fill no 16-lane AVX-512 block but fill 8-lane ones: a 24-wide GEMM on
    an AVX-512 CPU stays tensorized instead of falling to the generic rules."""
    intrin = choose_intrin(w, features)
    channels = w.shape[0] if is_conv else w.shape[-1]
    if intrin is None or channels % SHAPES[intrin][3] == 0 or "avx2" not in features:
        return intrin
    return choose_intrin(w, tuple(f for f in features if not f.startswith("avx512")))


def pack_matmul_np(w: np.ndarray, intrin: str) -> np.ndarray:
    """[K, N] -> [N/8, ceil(K/r), 8, r] in the intrinsic's B dtype (K zero-padded)."""
    _, b_dtype, r, lanes = SHAPES[intrin]
    k, n = w.shape
    w = np.pad(w, ((0, -k % r), (0, 0)))
    return np.ascontiguousarray(w.reshape(-1, r, n // lanes, lanes).transpose(2, 0, 3, 1)
                                ).astype(b_dtype)


def pack_conv_np(w: np.ndarray, intrin: str) -> np.ndarray:
    """[O, I, KH, KW] -> [O/8, ceil(I/r), KH, KW, 8, r] (I zero-padded)."""
    _, b_dtype, r, lanes = SHAPES[intrin]
    o, i, kh, kw = w.shape
    w = np.pad(w, ((0, 0), (0, -i % r), (0, 0), (0, 0)))
    return np.ascontiguousarray(w.reshape(o // lanes, lanes, -1, r, kh, kw)
                                .transpose(0, 2, 4, 5, 1, 3)).astype(b_dtype)


def gemm_te(x: te.Tensor, wp: te.Tensor) -> te.Tensor:
    """``y[.., m, n] = sum_{ko, ki} x[.., m, ko*r + ki] * Wp[n/8, ko, n%8, ki]`` in int32 (x of
    any rank: no reshape around the kernel, so FuseOps can still attach the epilogue)."""
    panels, kb, lanes, r = wp.shape
    ko, ki = te.reduce_axis((0, kb), "ko"), te.reduce_axis((0, r), "ki")

    def body(*idx):
        n = idx[-1]
        return te.sum(x[(*idx[:-1], ko * r + ki)].astype("int32")
                      * wp[n // lanes, ko, n % lanes, ki].astype("int32"), axis=[ko, ki])

    return te.compute((*x.shape[:-1], panels * lanes), body, name="int8_gemm",
                      attrs={"schedule_rule": RULE})


def conv_te(x: te.Tensor, wp: te.Tensor, strides, dilation) -> te.Tensor:
    """Direct conv on a padded ``[N, C/r, H, W, r]`` input, NCHW int32 output."""
    panels, cb, kh, kw, lanes, r = wp.shape
    n, _, h, w, _ = x.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = conv_output_size((int(h), int(w)), (int(kh), int(kw)), strides, (0,) * 4,
                              dilation)  # x is padded already
    c, y, v, ki = (te.reduce_axis((0, e), nm) for e, nm in ((cb, "c"), (kh, "kh"), (kw, "kw"),
                                                             (r, "ki")))
    return te.compute(
        (n, panels * lanes, oh, ow),
        lambda b, o, i, j: te.sum(
            x[b, c, i * sh + y * dh, j * sw + v * dw, ki].astype("int32")
            * wp[o // lanes, c, y, v, o % lanes, ki].astype("int32"), axis=[c, y, v, ki]),
        name="int8_conv", attrs={"schedule_rule": RULE})


def conv_nchwc_te(x: te.Tensor, wp: te.Tensor, strides, dilation) -> te.Tensor:
    """Direct conv on a padded NCHW{b}c input ``[N, C/b, H, W, b]``, NCHW{lanes}c int32 output
    ``[N, O/lanes, OH, OW, lanes]`` (one intrinsic call fills one output block). The reduction
    walks ``C/r`` groups of ``r`` adjacent channels, ``b/r`` of them per input block, so every
    call still reads ``r`` contiguous activations."""
    panels, groups, kh, kw, lanes, r = wp.shape
    n, _, h, w, b = x.shape
    per = int(b) // int(r)
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = conv_output_size((int(h), int(w)), (int(kh), int(kw)), strides, (0,) * 4,
                              dilation)  # x is padded already
    c, y, v, ki = (te.reduce_axis((0, e), nm) for e, nm in ((groups, "c"), (kh, "kh"),
                                                             (kw, "kw"), (r, "ki")))
    return te.compute(
        (n, panels, oh, ow, lanes),
        lambda b_, o, i, j, lane: te.sum(
            x[b_, c // per, i * sh + y * dh, j * sw + v * dw, c % per * r + ki].astype("int32")
            * wp[o, c, y, v, lane, ki].astype("int32"), axis=[c, y, v, ki]),
        name="int8_conv_nchwc", attrs={"schedule_rule": RULE})


def nchwc_conv(builder: relax.BlockBuilder, call: relax.Call,
               features: tuple[str, ...]) -> relax.Expr | None:
    """An integer conv that ``ConvertLayout`` moved to NCHW{b}c (data ``[N, C/b, H, W, b]``,
    constant weight ``OIHW{b}o``) as the packed kernel writing NCHW{b}c itself, so the int8
    layers of a CNN and the float ones between them share one layout (no transforms around
    each int8 conv). None when no intrinsic of ``b`` output lanes computes it exactly."""
    data, weight = call.args
    a = call.attrs
    shape = common.static_shape(data)
    if not isinstance(weight, Constant) or shape is None or len(shape) != 5 \
            or str(data.ty.dtype) not in _INTS or str(call.ty.dtype) != "int32" \
            or int(a.groups) != 1 or a.kernel_layout != f"OIHW{shape[-1]}o" \
            or a.out_layout != a.data_layout:
        return None
    b = shape[-1]
    w = unpack_np(weight.value.numpy())  # OIHW{b}o -> OIHW
    intrin = choose_intrin(w, features)
    if intrin is None or SHAPES[intrin][3] != b or b % SHAPES[intrin][2] \
            or (intrin == DOT_SDOT and str(data.ty.dtype) != "int8"):
        return None
    top, left, bottom, right = (int(p) for p in a.padding)
    corr = _shift_correction(data, intrin, w, (1, 2, 3))
    xa = _operand(data, intrin)
    if top or left or bottom or right:
        xa = relax.op.nn.pad(xa, [0, 0, 0, 0, top, bottom, left, right, 0, 0],
                             pad_value=0.0 if corr is None else 128.0)  # = 0 before the shift
    y = builder.call_te(conv_nchwc_te, builder.emit(xa), relax.const(pack_conv_np(w, intrin)),
                        [int(s) for s in a.strides], [int(d) for d in a.dilation],
                        primfunc_name_hint="int8_conv_nchwc")
    return y if corr is None else relax.op.subtract(
        y, relax.const(corr.reshape(1, -1, 1, 1, b)))


def _operand(x: relax.Expr, intrin: str) -> relax.Expr:
    """The activation in the intrinsic's A dtype (int8 -> uint8 by +128)."""
    a_dtype = SHAPES[intrin][0]
    if str(x.ty.dtype) == a_dtype:
        return x
    if a_dtype == "uint8":
        shifted = relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16"))
        return relax.op.astype(shifted, "uint8")
    return relax.op.astype(x, a_dtype)


def _shift_correction(x: relax.Expr, intrin: str, w: np.ndarray, axes) -> np.ndarray | None:
    """``128 * sum(W)`` per output channel when int8 activations were shifted to uint8."""
    if SHAPES[intrin][0] != "uint8" or str(x.ty.dtype) != "int8":
        return None
    return (128 * w.astype(np.int64).sum(axis=axes)).astype(np.int32)


@mutator
class _Int8Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, force: str | None, features: tuple[str, ...],
                 block: int):
        super().__init__(mod)
        self.force, self.features, self.block = force, features, block

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op not in (tvm.ir.Op.get("relax.matmul"), tvm.ir.Op.get("relax.nn.conv2d")) \
                or len(call.args) != 2 or not isinstance(call.args[1], Constant):
            return call
        x, w = call.args[0], call.args[1].value.numpy()
        if str(x.ty.dtype) not in _INTS or str(call.ty.dtype) != "int32" \
                or not np.issubdtype(w.dtype, np.integer) or common.static_shape(x) is None:
            return call
        is_conv = call.op == tvm.ir.Op.get("relax.nn.conv2d")
        intrin = self.force or _fitting(w, self.features, is_conv)
        if intrin == DOT_SDOT and str(x.ty.dtype) != "int8":
            intrin = None
        if is_conv and (intrin is None or int(call.attrs.groups) != 1):
            if self._blocked_grouped(call, x, w):
                return call  # to_nchwc runs it in NCHW{b}c (nchwc_conv2d, int32 sums)
            return self._group_conv(call, x)
        if intrin is None:
            return call
        if call.op == tvm.ir.Op.get("relax.matmul"):
            return self._matmul(call, x, w, intrin)
        return self._conv(call, x, w, intrin)

    def _matmul(self, call, x, w, intrin):
        shape = common.static_shape(x)
        if w.ndim != 2 or len(shape) < 2 or w.shape[1] % SHAPES[intrin][3]:
            return call
        k, r = shape[-1], SHAPES[intrin][2]
        xa = _operand(x, intrin)
        if k % r:
            xa = relax.op.nn.pad(xa, [0, 0] * (len(shape) - 1) + [0, r - k % r])
        y = self.builder_.call_te(gemm_te, self.builder_.emit(xa),
                                  relax.const(pack_matmul_np(w, intrin)),
                                  primfunc_name_hint="int8_gemm")
        corr = _shift_correction(x, intrin, w, 0)
        return y if corr is None else relax.op.subtract(y, relax.const(corr))

    def _conv(self, call, x, w, intrin):
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return call
        if w.shape[0] % SHAPES[intrin][3]:
            return self._group_conv(call, x)
        n, c, h, wd = common.static_shape(x)
        if self.block and not self.force and SHAPES[intrin][3] == self.block \
                and c % self.block == 0:
            return call  # to_nchwc moves it to NCHW{b}c and calls nchwc_conv
        r = SHAPES[intrin][2]
        top, left, bottom, right = (int(p) for p in a.padding)
        cp = c + (-c % r)
        corr = _shift_correction(x, intrin, w, (1, 2, 3))
        xa = relax.op.nn.pad(_operand(x, intrin), [0, 0, 0, cp - c, top, bottom, left, right],
                             pad_value=0.0 if corr is None else 128.0)  # = 0 before the shift
        xa = relax.op.permute_dims(
            relax.op.reshape(xa, [n, cp // r, r, h + top + bottom, wd + left + right]),
            [0, 1, 3, 4, 2])
        y = self.builder_.call_te(conv_te, self.builder_.emit(xa),
                                  relax.const(pack_conv_np(w, intrin)),
                                  [int(s) for s in a.strides], [int(d) for d in a.dilation],
                                  primfunc_name_hint="int8_conv")
        return y if corr is None else relax.op.subtract(
            y, relax.const(corr.reshape(1, -1, 1, 1)))

    def _blocked_grouped(self, call, x, w) -> bool:
        """A grouped 8-bit conv whose channels fill ``block``-lane blocks, in deferring mode."""
        c = common.static_shape(x)[1]
        return bool(self.block) and not self.force and int(call.attrs.groups) != 1 \
            and c % self.block == 0 and w.shape[0] % self.block == 0 \
            and str(w.dtype) in _INTS

    def _group_conv(self, call, x):
        """Depthwise/grouped (or channels that fill no vector): a plain NCHW TE kernel for
        the generic conv rule (kept away from NCHWc conversion, which cannot lower int8)."""
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return call
        return self.builder_.call_te(
            topi.nn.group_conv2d_nchw, x, call.args[1], [int(v) for v in a.strides],
            [int(v) for v in a.padding], [int(v) for v in a.dilation], int(a.groups), "int32",
            primfunc_name_hint="int8_group_conv")


def int8_pack(target: Target, force: str | None = None, block: int = 0
              ) -> tvm.transform.Pass:
    """Relax module pass: every integer ``matmul``/``conv2d`` (groups 1) with a constant weight
    and int32 output becomes a packed TE kernel (x86 with AVX2/AVX-512/VNNI, AArch64 with
    dotprod for int8 activations; no-op elsewhere: plain NEON keeps the generic rules, whose
    vectorized int8 products LLVM lowers to the widening ``smlal``).
    ``force`` picks the intrinsic regardless of the weight range (tests, benchmarks).
    ``block``: leave the convs whose channels fill blocks of ``block`` lanes (the intrinsic's
    output lanes) to the NCHWc pass, which packs them in that layout (``nchwc_conv``); a
    second run without it packs whatever that pass left in NCHW."""

    @tvm.transform.module_pass(opt_level=0, name="Int8Pack")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not common.is_cpu(target):
            return mod
        features = int8_features(target)  # plain NEON: no intrinsic, generic rules (smlal)
        packer = _Int8Packer(mod, force, features, block)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                packer.builder_.update_func(gv, packer.visit_expr(func))
        return packer.builder_.finalize()

    return _pass


def int8_features(target: Target) -> tuple[str, ...]:
    from tvm.target import codegen

    if not common.is_cpu(target):
        return ()
    return tuple(f for f in ("avx512bw", "avx512vnni", "dotprod", "avx2")
                 if codegen.target_has_features(f, target))

