"""onnxruntime's MatMulNBits weight layout in numpy: pack (for tests, exporters) and unpack.

Layout (onnxruntime contrib op MatMulNBits): the weight is W^T, shape [N, K]; each row splits
into ``k_blocks = ceil(K / block_size)`` blocks of ``block_size`` values, packed ``8 / bits`` per
byte low bits first into B [N, k_blocks, block_size * bits / 8]; scales [N * k_blocks];
zero points packed the same way per row into [N * ceil(k_blocks * bits / 8)], default
``2 ** (bits - 1)``. W[k, n] = (q[n, k] - zp[n, k // block_size]) * scale[n, k // block_size].
"""

from __future__ import annotations

import numpy as np


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Little-end-first unpacking of the last axis of a uint8 array into ``count`` values."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    values = np.pad(values.astype(np.uint8), [(0, 0)] * (values.ndim - 1) + [(0, pad)])
    grouped = values.reshape(*values.shape[:-1], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def dequantize_nbits(b, scales, zero_points, k: int, n: int, bits: int,
                     block_size: int) -> np.ndarray:
    """The float weight W [K, N] that MatMulNBits multiplies by (``A @ W``)."""
    if bits not in (2, 4, 8):
        raise ValueError(f"MatMulNBits bits={bits} is not supported (2, 4 or 8)")
    k_blocks = -(-k // block_size)
    q = _unpack(b.reshape(n, k_blocks, -1), bits, block_size).astype(np.float32)
    scale = scales.reshape(n, k_blocks, 1).astype(np.float32)
    if zero_points is None:
        zp = np.float32(2 ** (bits - 1))
    elif zero_points.dtype == np.uint8:
        zp = _unpack(zero_points.reshape(n, -1), bits, k_blocks)[..., None].astype(np.float32)
    else:  # float zero points: W = (q - zp) * scale as well in onnxruntime's kernels
        zp = zero_points.reshape(n, k_blocks, 1).astype(np.float32)
    w = ((q - zp) * scale).reshape(n, k_blocks * block_size)[:, :k]
    return np.ascontiguousarray(w.T)


def quantize_nbits(w: np.ndarray, bits: int = 4, block_size: int = 32):
    """Asymmetric block-wise quantization of W [K, N] into MatMulNBits' (B, scales, zp)."""
    k, n = w.shape
    k_blocks = -(-k // block_size)
    wt = np.pad(w.T.astype(np.float32), [(0, 0), (0, k_blocks * block_size - k)])
    blocks = wt.reshape(n, k_blocks, block_size)
    qmax = (1 << bits) - 1
    low = np.minimum(blocks.min(-1), 0)
    high = np.maximum(blocks.max(-1), 0)
    scale = np.where(high > low, (high - low) / qmax, 1.0).astype(np.float32)
    zp = np.clip(np.rint(-low / scale), 0, qmax).astype(np.uint8)
    q = np.clip(np.rint(blocks / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    b = _pack(q, bits).reshape(n, k_blocks, block_size * bits // 8)
    return b, scale.reshape(-1), _pack(zp, bits).reshape(-1)
