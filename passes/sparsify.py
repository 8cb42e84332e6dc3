"""Sparsify constant ``matmul``/``conv2d`` weights (magnitude: unstructured, block or N:M) and run
the layers where it pays through block-sparse (BSR) kernels, bias and ReLU fused.

Zeroing keeps shapes; only kernels that skip the zeros make it faster. Each layer's weight (a conv
viewed as its im2col matrix) is cut by a global or per-layer magnitude threshold, stored as BSR
of W^T (fp32, or int8 with per-column scales) and replaced by ``call_tir`` of the kernel in
``schedules/cpu/sparse_matmul.py`` (``schedules/gpu/`` on CUDA), absorbing a following bias add
and ReLU. With ``decide="auto"`` a layer goes sparse only where the cost model (timed on this
machine, ``_sparse_cost.py``) says it beats our dense kernel; elsewhere the zeroed weight stays
dense. Every layer's choice and break-even sparsity is recorded for the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tvm

from tvmcompress.config import PassConfig, register_pass
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _sparse_plan as plan
from tvmcompress.passes._quant_plan import find_layers

PATTERNS = ("unstructured", "block", "n:m")
CRITERIA = ("l2", "l1")
GRANULARITIES = ("per-layer", "global")
DECISIONS = ("auto", "sparse", "dense")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"SparsifyConfig.{field} = {value!r} is invalid: {allowed}")


@dataclasses.dataclass(frozen=True)
class SparsifyConfig(PassConfig):
    """sparsity: fraction [0, 1) of weights zeroed (float), or ``{layer: fraction}``
    (layers named as in the report: matmul0, conv2d1; unnamed layers stay dense).
    pattern: ``unstructured`` (single weights, CSR), ``block`` (``block`` = (rows of K,
    columns of N); None = 1 x the target's vector width) or ``n:m`` (``nm`` = (n, m): n of every
    m consecutive K weights kept per output; its sparsity is 1 - n/m). criterion: block score
    (L2/L1 norm; plain magnitude for single weights). granularity: one threshold over all layers
    (``global``) or the same fraction in each (``per-layer``). exclude: layer names kept dense
    and whole. min_size: smaller weights are left alone. decide: ``auto`` (sparse only where
    measured faster), ``sparse`` or ``dense`` (zeroed weights, dense kernels). int8: store the
    sparse values as int8 with per-output-channel scales."""

    sparsity: float | dict[str, float] = 0.8
    pattern: str = "block"
    block: tuple[int, int] | None = None
    nm: tuple[int, int] = (2, 4)
    criterion: str = "l2"
    granularity: str = "per-layer"
    exclude: tuple[str, ...] = ()
    min_size: int = 4096
    decide: str = "auto"
    int8: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        ratios = self.sparsity.items() if isinstance(self.sparsity, dict) else [("", self.sparsity)]
        for key, r in ratios:
            if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
                _fail(f"sparsity[{key!r}]" if key else "sparsity", r,
                      "must be in [0, 1) (the fraction of weights zeroed), e.g. 0.9")
        for field, value, allowed in (("pattern", self.pattern, PATTERNS),
                                      ("criterion", self.criterion, CRITERIA),
                                      ("granularity", self.granularity, GRANULARITIES),
                                      ("decide", self.decide, DECISIONS)):
            if value not in allowed:
                _fail(field, value, f"choose one of {', '.join(allowed)}")
        if self.block is not None:
            object.__setattr__(self, "block", tuple(self.block))
            if len(self.block) != 2 or not all(isinstance(b, int) and b >= 1 for b in self.block):
                _fail("block", self.block, "give (rows, cols) of positive ints, e.g. (1, 8)")
        object.__setattr__(self, "nm", tuple(self.nm))
        n, m = (*self.nm, 0, 0)[:2]
        if len(self.nm) != 2 or not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            _fail("nm", self.nm, "give (n, m) with 0 < n < m, e.g. (2, 4) for 2:4")
        if self.min_size < 0:
            _fail("min_size", self.min_size, "must be >= 0 (weights with fewer elements "
                                             "stay dense)")


def sparsify_module(mod: tvm.IRModule, cfg: SparsifyConfig) -> tvm.IRModule:
    """Rewrite ``main``'s eligible layers; every decision is recorded for the report."""
    target = tvm.target.Target.current(allow_none=True)
    layers, skipped = find_layers(mod["main"])
    plan.check_names(cfg, [la.name for la in layers] + [name for name, _ in skipped])
    for name, reason in skipped:
        plan.note(name, reason)
    chosen = plan.select(layers, cfg, target)
    masks = plan.masks(chosen, cfg)
    rewrites = {}
    for item, keep in zip(chosen, masks, strict=True):
        zeroed = item.matrix * keep
        rewrites[item.layer.var] = plan.decide(mod["main"], item, zeroed.astype(np.float32),
                                               cfg, target)
    return plan.rewrite(mod, rewrites)


@register_pass(SparsifyConfig)
def sparsify(config: SparsifyConfig) -> tvm.transform.Pass:
    """The Sparsify module pass for ``config``."""

    @tvm.transform.module_pass(opt_level=0, name="Sparsify")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return sparsify_module(mod, config)

    return _pass
