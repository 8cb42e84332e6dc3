"""Numerics of low-rank splitting, in numpy: truncated (optionally whitened) SVD, kernel
reshapes for the two conv splits, rank selection by energy and by a MACs budget.

Everything works on a weight in matmul form ``M`` (K inputs x N outputs, ``y = x @ M``), so the
same SVD serves dense layers and both conv splits; the pass only reshapes kernels.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Factors:
    """``M ~= P[:, :r] * s[:r] @ Vt[:r]``; ``s`` are the (whitened) singular values."""

    P: np.ndarray
    s: np.ndarray
    Vt: np.ndarray

    def split(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``A`` (K x r) and ``B`` (r x N) with ``A @ B`` the best rank-``rank`` fit; the
        singular values are shared as square roots so both factors have similar scale."""
        root = np.sqrt(self.s[:rank])
        return self.P[:, :rank] * root, root[:, None] * self.Vt[:rank]

    def energy(self, rank: int) -> float:
        """Fraction of the squared singular values kept at ``rank``."""
        return float(energy_curve(self.s)[rank - 1]) if rank > 0 else 0.0


def factorize(matrix: np.ndarray, gram: np.ndarray | None = None) -> Factors:
    """SVD of ``matrix`` (K x N), in float64.

    With ``gram`` (K x K, the inputs' X^T X) the SVD is of ``L^T M`` where ``G = L L^T``:
    truncating it minimises ``||X (M - M_r)||`` instead of ``||M - M_r||`` (SVD-LLM style
    whitening), so directions the data never excites are dropped first.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if gram is None:
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        return Factors(u, s, vt)
    g = np.asarray(gram, dtype=np.float64)
    # Damping keeps the Cholesky factor invertible when some inputs are (near) constant.
    damp = 1e-6 * max(float(np.trace(g)) / len(g), 1e-12)
    lower = np.linalg.cholesky(g + damp * np.eye(len(g)))
    u, s, vt = np.linalg.svd(lower.T @ m, full_matrices=False)
    return Factors(np.linalg.solve(lower.T, u), s, vt)


def energy_curve(s: np.ndarray) -> np.ndarray:
    """Cumulative fraction of squared singular values: entry r-1 is what rank r keeps."""
    sq = np.asarray(s, dtype=np.float64) ** 2
    total = sq.sum()
    return np.cumsum(sq) / total if total > 0 else np.ones_like(sq)


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """The smallest rank keeping at least ``energy`` of the squared singular values."""
    curve = energy_curve(s)
    return int(min(np.searchsorted(curve, energy - 1e-12) + 1, len(curve)))


def round_rank(rank: int, round_to: int, full: int) -> int:
    """``rank`` rounded up to a multiple of ``round_to`` (kernel-friendly), at most ``full``."""
    return min(full, max(round_to, math.ceil(rank / round_to) * round_to))


def matmul_factors_error(matrix: np.ndarray, rank: int) -> float:
    """Relative Frobenius error of the rank-``rank`` split of ``matrix`` (for tests)."""
    a, b = factorize(matrix).split(rank)
    return float(np.linalg.norm(matrix - a @ b) / max(np.linalg.norm(matrix), 1e-30))


# Conv kernels (OIHW) <-> matmul form.
def channel_matrix(kernel: np.ndarray) -> np.ndarray:
    """(I*kh*kw) x O: a k x k conv as a matmul over im2col patches."""
    return kernel.reshape(kernel.shape[0], -1).T


def channel_kernels(a: np.ndarray, b: np.ndarray, kernel_shape) -> tuple[np.ndarray, np.ndarray]:
    """Factors of ``channel_matrix`` -> (k x k conv with r outputs, 1 x 1 conv r -> O)."""
    o, i, kh, kw = kernel_shape
    r = a.shape[1]
    return a.T.reshape(r, i, kh, kw), b.T.reshape(o, r, 1, 1)


def spatial_matrix(kernel: np.ndarray) -> np.ndarray:
    """(I*kh) x (O*kw), Jaderberg et al.: rank r gives a kh x 1 conv then a 1 x kw conv."""
    o, i, kh, kw = kernel.shape
    return kernel.transpose(1, 2, 0, 3).reshape(i * kh, o * kw)


def spatial_kernels(a: np.ndarray, b: np.ndarray, kernel_shape) -> tuple[np.ndarray, np.ndarray]:
    """Factors of ``spatial_matrix`` -> (kh x 1 conv I -> r, 1 x kw conv r -> O)."""
    o, i, kh, kw = kernel_shape
    r = a.shape[1]
    first = a.T.reshape(r, i, kh, 1)
    second = b.reshape(r, o, kw).transpose(1, 0, 2).reshape(o, r, 1, kw)
    return first, second


@dataclass
class Candidate:
    """One layer for the budget search: split cost is ``rank * per_rank`` MACs."""

    curve: np.ndarray
    per_rank: int
    orig_macs: int
    max_rank: int  # largest multiple of round_to below full rank passing min_gain, else 0


def allocate_budget(layers: list[Candidate], budget: float, round_to: int) -> list[int | None]:
    """Ranks (None = leave whole) within ``budget`` MACs, greedily by energy per MAC.

    Every splittable layer starts at the smallest rank; each step raises one layer by
    ``round_to`` (or, past its largest paying rank, restores it whole), taking the step with
    the most energy kept per extra MAC that still fits.
    """
    ranks: list[int | None] = [round_to if c.max_rank >= round_to else None for c in layers]

    def cost(c: Candidate, r: int | None) -> int:
        return c.orig_macs if r is None else r * c.per_rank

    def step(i: int) -> tuple[float, int, int, int | None] | None:
        c, r = layers[i], ranks[i]
        if r is None:
            return None
        nxt = r + round_to if r + round_to <= c.max_rank else None
        gain = (c.curve[nxt - 1] if nxt else 1.0) - c.curve[r - 1]
        extra = cost(c, nxt) - cost(c, r)
        return (-gain / max(extra, 1), i, extra, nxt)

    total = sum(cost(c, r) for c, r in zip(layers, ranks, strict=True))
    heap = [s for i in range(len(layers)) if (s := step(i))]
    heapq.heapify(heap)
    while heap:
        _, i, extra, nxt = heapq.heappop(heap)
        if total + extra > budget:
            continue
        total += extra
        ranks[i] = nxt
        if (s := step(i)) is not None:
            heapq.heappush(heap, s)
    return ranks
