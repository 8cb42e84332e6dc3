"""Quantization numerics in plain numpy: weights, activations, int4 packing, exotic schemes.

The pass (``quantize.py``) only moves these arrays into the IR, so tests check the math here
directly. Zero ranges (constant tensors, all-zero channels) get scale 1: every value then
quantizes to the zero point and dequantizes exactly, instead of dividing by zero.
"""

from __future__ import annotations

import numpy as np

ACTIVATION_MODES = ("uint8-asym", "int8-sym")
ACT_DTYPE = {"uint8-asym": "uint8", "int8-sym": "int8"}


def _safe(scale: np.ndarray) -> np.ndarray:
    """Scale 1 where the range is zero, so constant tensors round-trip exactly."""
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def _per_channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(i for i in range(w.ndim) if i != axis)
    return np.max(np.abs(w), axis=other)


def _bcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize_per_channel(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization along ``axis``: int8 values in [-qmax, qmax] and
    float32 scales (one per channel), ``w ~= q * scale``."""
    qmax = 2 ** (bits - 1) - 1
    scale = _safe(_per_channel_absmax(w, axis) / qmax)
    q = np.clip(np.rint(w / _bcast(scale, w.ndim, axis)), -qmax, qmax)
    return q.astype(np.int8), scale


def dequantize_per_channel(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    return (q.astype(np.float32) * _bcast(scale, q.ndim, axis)).astype(np.float32)


def activation_qparams(lo: float, hi: float, mode: str) -> tuple[float, int]:
    """Per-tensor (scale, zero point) covering [lo, hi] (widened to include 0, so zero
    padding and ReLU zeros are exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if mode == "int8-sym":
        return float(_safe(max(-lo, hi) / 127.0)), 0
    scale = float(_safe((hi - lo) / 255.0))
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def quantize_activation(x: np.ndarray, scale: float, zero: int, mode: str) -> np.ndarray:
    """What the rewritten graph computes: round, shift by the zero point, clip, cast."""
    lo, hi = (0, 255) if mode == "uint8-asym" else (-127, 127)
    return np.clip(np.rint(x / np.float32(scale)) + zero, lo, hi).astype(ACT_DTYPE[mode])


def fake_quantize_activation(x: np.ndarray, scale: float, zero: int, mode: str) -> np.ndarray:
    q = quantize_activation(x, scale, zero, mode).astype(np.float32)
    return ((q - zero) * np.float32(scale)).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Values 0..15 of shape [K, N] (K even) -> uint8 [K/2, N]: row 2i low nibble, 2i+1 high."""
    q = q.astype(np.uint8)
    return (q[0::2] | (q[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    out = np.empty((packed.shape[0] * 2, *packed.shape[1:]), dtype=np.uint8)
    out[0::2], out[1::2] = packed & 15, packed >> 4
    return out


def quantize_groups_int4(w: np.ndarray, group: int, symmetric: bool, search: bool = True):
    """Group-wise int4 of ``w`` [K, N] along K (the reduction axis), K a multiple of ``group``.

    Returns ``(packed uint8 [K/2, N], scale [K/g, N], offset [K/g, N] or None)`` with
    ``w ~= (q - 8) * scale`` (symmetric, q in 0..15) or ``w ~= q * scale + offset``
    (asymmetric). With ``search``, each group's range is shrunk by the factor in 0.7..1 with
    the least squared error (clipping a few outliers buys a finer step for the rest).
    """
    k, n = w.shape
    g = w.reshape(k // group, group, n).astype(np.float32)
    best = None
    for ratio in np.linspace(0.7, 1.0, 13) if search else [1.0]:
        q, scale, offset = _int4_at(g, symmetric, ratio)
        deq = (q - 8) * scale[:, None] if symmetric else q * scale[:, None] + offset[:, None]
        err = np.sum((deq - g) ** 2, axis=1)
        if best is None:
            best = [err, q, scale, offset]
            continue
        better = err < best[0]
        best[0] = np.where(better, err, best[0])
        best[1] = np.where(better[:, None], q, best[1])
        best[2] = np.where(better, scale, best[2])
        best[3] = None if symmetric else np.where(better, offset, best[3])
    _, q, scale, offset = best
    return pack_int4(q.reshape(k, n)), scale.astype(np.float32), offset


def _int4_at(g: np.ndarray, symmetric: bool, ratio: float):
    """Codes 0..15, scale and offset of groups ``g`` [G, g, N] with the range times ``ratio``."""
    if symmetric:
        scale = _safe(np.max(np.abs(g), axis=1) * ratio / 7.0)
        return np.clip(np.rint(g / scale[:, None]), -8, 7) + 8, scale, None
    lo, hi = g.min(axis=1), g.max(axis=1)
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * ratio
    scale = _safe(2 * half / 15.0)
    offset = (mid - half).astype(np.float32)
    return np.clip(np.rint((g - offset[:, None]) / scale[:, None]), 0, 15), scale, offset


def dequantize_groups_int4(packed, scale, offset, group: int) -> np.ndarray:
    q = unpack_int4(packed).astype(np.float32)
    k, n = q.shape
    g = q.reshape(k // group, group, n)
    w = (g - 8) * scale[:, None] if offset is None else g * scale[:, None] + offset[:, None]
    return w.reshape(k, n).astype(np.float32)


def binary_weights(w: np.ndarray, axis: int) -> np.ndarray:
    """sign(w) times the per-channel mean |w| (XNOR-Net's optimal scale)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.mean(np.abs(w), axis=other, keepdims=True)
    return (np.where(w >= 0, 1.0, -1.0) * scale).astype(np.float32)


def ternary_weights(w: np.ndarray, axis: int) -> np.ndarray:
    """{-a, 0, +a} per channel: threshold 0.7 * mean |w|, a = mean |w| above it (TWN)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    keep = np.abs(w) > 0.7 * np.mean(np.abs(w), axis=other, keepdims=True)
    count = np.maximum(np.sum(keep, axis=other, keepdims=True), 1)
    scale = np.sum(np.abs(w) * keep, axis=other, keepdims=True) / count
    return (np.sign(w) * keep * scale).astype(np.float32)


def pow2_weights(w: np.ndarray, axis: int, levels: int = 8) -> np.ndarray:
    """Per-channel scale (max |w|) times ±2^-k, k in 0..levels-1, or 0: multiplies by the
    scale and shifts. Rounding is to the nearest level in the log domain."""
    scale = _bcast(_safe(_per_channel_absmax(w, axis)), w.ndim, axis)
    r = np.abs(w) / scale
    k = np.clip(np.rint(-np.log2(np.maximum(r, 1e-30))), 0, levels - 1)
    mag = np.where(r < 2.0 ** -(levels - 1) / 2, 0.0, 2.0 ** -k)
    return (np.sign(w) * mag * scale).astype(np.float32)


def activation_range(values: np.ndarray, lo: float, hi: float, method: str, mode: str,
                     percentile: float = 99.99) -> tuple[float, float]:
    """Clipping range of one activation from its observed extremes and a value sample."""
    if method == "minmax" or values.size == 0 or lo == hi:
        return float(lo), float(hi)
    if method == "percentile":
        a, b = np.percentile(values, [100.0 - percentile, percentile])
        return float(a), float(b)
    if method == "entropy":
        t = kl_threshold(np.abs(values))
        return max(float(lo), -t), min(float(hi), t)
    return mse_range(values, lo, hi, mode)


def kl_threshold(absval: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the |x| clip threshold whose 128-level quantized
    histogram has the least KL divergence from the clipped reference histogram."""
    hist, edges = np.histogram(absval, bins=bins, range=(0.0, float(absval.max()) or 1.0))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, 8):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()
        chunks = np.array_split(hist[:i], levels)
        quant = np.concatenate([np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0)
                                for c in chunks])
        p, q = ref / ref.sum(), quant / max(quant.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


def mse_range(values: np.ndarray, lo: float, hi: float, mode: str) -> tuple[float, float]:
    """Shrink [lo, hi] by the factor (of 100 in 0.05..1) with the least fake-quant MSE."""
    v = values[:: max(1, values.size // 100_000)]
    best, best_range = np.inf, (lo, hi)
    for alpha in np.linspace(0.05, 1.0, 100):
        scale, zero = activation_qparams(lo * alpha, hi * alpha, mode)
        err = float(np.mean((fake_quantize_activation(v, scale, zero, mode) - v) ** 2))
        if err < best:
            best, best_range = err, (float(lo * alpha), float(hi * alpha))
    return best_range
