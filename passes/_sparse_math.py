"""Numerics of the Sparsify pass (pure numpy, called directly by the tests): which weights
to zero (magnitude masks by element, block or N:M group), BSR storage of the result, and the
int8 values with per-output-column scales.

Every matrix here is a matmul weight ``W[K, N]`` (K the reduction, N the outputs); a conv weight
is first viewed as one (``conv_as_matrix``). Blocks are ``bk`` rows of K by ``bn`` columns of N,
so a ``1 x 8`` block is one AVX2 vector of eight outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def conv_as_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW conv weight as ``W[C*kh*kw, O]`` (rows ordered c, kh, kw: the im2col order)."""
    return weight.reshape(weight.shape[0], -1).T


def block_scores(w: np.ndarray, block: tuple[int, int], criterion: str = "l2") -> np.ndarray:
    """Importance of each ``block`` of ``w`` ([K/bk, N/bn]): its L2 or L1 norm."""
    bk, bn = block
    k, n = w.shape
    if k % bk or n % bn:
        raise ValueError(f"block {bk}x{bn} does not divide the weight shape {k}x{n}")
    tiles = np.abs(w.reshape(k // bk, bk, n // bn, bn).astype(np.float64))
    if criterion == "l1":
        return tiles.sum(axis=(1, 3))
    return np.sqrt((tiles ** 2).sum(axis=(1, 3)))


def threshold(scores: list[np.ndarray], sparsity: float) -> float:
    """The score below which ``sparsity`` of all the scores (pooled) fall: the global cut."""
    flat = np.concatenate([s.ravel() for s in scores])
    drop = round(sparsity * flat.size)
    if drop == 0:
        return -np.inf
    return float(np.partition(flat, drop - 1)[drop - 1])


def block_mask(scores: np.ndarray, sparsity: float, cut: float | None = None) -> np.ndarray:
    """Keep-mask over blocks: the lowest ``sparsity`` fraction (or those <= ``cut``) dropped.
    Ranks, not values, decide within a layer, so ties cannot drop more than asked."""
    if cut is not None:
        return scores > cut
    drop = round(sparsity * scores.size)
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores, axis=None, kind="stable")[:drop]] = False
    return keep.reshape(scores.shape)


def expand(mask: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Block keep-mask to an element keep-mask."""
    return np.repeat(np.repeat(mask, block[0], axis=0), block[1], axis=1)


def nm_mask(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest |w| of every ``m`` consecutive rows (K axis) in each column: the
    N:M pattern (2:4 is 50% sparse). K must be a multiple of ``m``."""
    k, cols = w.shape
    if k % m:
        raise ValueError(f"N:M groups of {m} rows do not divide K = {k}")
    groups = np.abs(w).reshape(k // m, m, cols)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :n, :], True, axis=1)
    return keep.reshape(k, cols)


@dataclass
class Bsr:
    """BSR of ``W^T``: block row j = output panel j; ``data[p, kk, c]`` = W[indices[p]*bk + kk,
    j*bn + c]; ``scale`` per output column (ones unless the values are int8)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    scale: np.ndarray
    block: tuple[int, int]
    rows: int  # K

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """data and indices with at least one (unused) entry: TIR buffers cannot be empty."""
        if self.nnzb:
            return self.data, self.indices
        return np.zeros((1, *self.data.shape[1:]), self.data.dtype), np.zeros(1, np.int32)

    @property
    def nnzb(self) -> int:
        return int(self.indices.size)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.data, self.indices, self.indptr, self.scale))

    def dense(self) -> np.ndarray:
        """The ``W[K, N]`` this stores (dequantized), for the parity tests."""
        bk, bn = self.block
        panels = self.indptr.size - 1
        tiles = np.zeros((panels, self.rows // bk, bk, bn), dtype=np.float32)
        rows = np.repeat(np.arange(panels), np.diff(self.indptr))
        tiles[rows, self.indices] = self.data.astype(np.float32)
        return tiles.transpose(1, 2, 0, 3).reshape(self.rows, panels * bn) * self.scale


def to_bsr(w: np.ndarray, block: tuple[int, int], int8: bool = False) -> Bsr:
    """Store the (already zeroed) ``w`` as BSR with ``block``; int8 values with symmetric
    per-column scales (max |w| / 127) when ``int8``."""
    bk, bn = block
    k, n = w.shape
    scale = np.ones(n, dtype=np.float32)
    values = w.astype(np.float32)
    if int8:
        scale = (np.abs(values).max(axis=0) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        values = np.clip(np.round(values / scale), -127, 127)
    keep = (block_scores(values, block, "l1") > 0).T  # [panels, k-blocks], row-major = BSR
    tiles = values.reshape(k // bk, bk, n // bn, bn).transpose(2, 0, 1, 3)
    data = tiles[keep].astype(np.int8 if int8 else np.float32)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return Bsr(np.ascontiguousarray(data), np.nonzero(keep)[1].astype(np.int32),
               indptr.astype(np.int32), scale, block, k)
