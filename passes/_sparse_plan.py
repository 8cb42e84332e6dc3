"""Which layers the Sparsify pass cuts, how (block shape, mask), and whether each runs sparse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from tvmcompress.errors import ConfigError
from tvmcompress.passes import _sparse_cost as cost
from tvmcompress.passes import _sparse_emit as emit
from tvmcompress.passes import _sparse_math as sm
from tvmcompress.passes._quant_plan import Layer
from tvmcompress.passes._sparse_rewrite import Plan, epilogue, rewrite
from tvmcompress.passes.record import record
from tvmcompress.schedules.cpu import common
from tvmcompress.schedules.cpu.sparse_matmul import vector_block

NAME = "Sparsify"
__all__ = ["Item", "check_names", "decide", "masks", "note", "rewrite", "select"]


@dataclass
class Item:
    """One layer to cut: its weight as ``W[K, N]``, block shape and target sparsity."""

    layer: Layer
    matrix: np.ndarray
    block: tuple[int, int]
    sparsity: float


def note(layer: str, reason: str) -> None:
    record(NAME, layer=layer, storage="dense", note=reason)


def check_names(cfg, known: list[str]) -> None:
    """Names in ``exclude``/``sparsity`` that match no layer are typos: say what exists."""
    names = list(cfg.exclude) + list(cfg.sparsity if isinstance(cfg.sparsity, dict) else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"SparsifyConfig names layers {unknown} this model does not have; "
                          f"its layers: {', '.join(known) or '(none)'}")


def _block(layer: str, k: int, n: int, cfg, target) -> tuple[int, int]:
    if cfg.pattern != "block":
        if cfg.pattern == "n:m" and k % cfg.nm[1]:
            raise ConfigError(f"SparsifyConfig.nm = {cfg.nm}: groups of {cfg.nm[1]} do not divide "
                              f"K = {k} of {layer}; exclude it or pick another m")
        return (1, 1)
    if cfg.block is None:  # 1 x vector width, narrowed until it divides N
        return (1, common.lanes_for(n, vector_block(target, "float32")))
    if k % cfg.block[0] or n % cfg.block[1]:
        raise ConfigError(f"SparsifyConfig.block = {cfg.block} does not divide the weight "
                          f"{k}x{n} (K x N) of {layer}; use a block dividing it, block=None "
                          f"(per target) or exclude={layer!r}")
    return cfg.block


def select(layers: list[Layer], cfg, target) -> list[Item]:
    """Layers to cut, with their matrices; the others are recorded as skipped."""
    items = []
    for layer in layers:
        ratio = cfg.sparsity.get(layer.name) if isinstance(cfg.sparsity, dict) else cfg.sparsity
        reason = ("excluded" if layer.name in cfg.exclude else
                  "no sparsity given for it" if ratio is None else
                  f"weight has {layer.weight.size} < min_size = {cfg.min_size} elements"
                  if layer.weight.size < cfg.min_size else
                  "grouped conv" if layer.kind == "conv2d" and int(layer.call.attrs.groups) != 1
                  else None)
        if reason:
            note(layer.name, reason)
            continue
        matrix = layer.weight if layer.kind == "matmul" else sm.conv_as_matrix(layer.weight)
        block = _block(layer.name, *matrix.shape, cfg, target)
        items.append(Item(layer, matrix, block, float(ratio)))
    return items


def masks(items: list[Item], cfg) -> list[np.ndarray]:
    """Element keep-masks: N:M per group; else block scores cut per layer or by one global
    threshold over every layer's scores."""
    if cfg.pattern == "n:m":
        return [sm.nm_mask(it.matrix, *cfg.nm) for it in items]
    scores = [sm.block_scores(it.matrix, it.block, cfg.criterion) for it in items]
    cut = None
    if cfg.granularity == "global" and items:
        cut = sm.threshold(scores, items[0].sparsity)
    return [sm.expand(sm.block_mask(s, it.sparsity, cut), it.block)
            for s, it in zip(scores, items, strict=True)]


def _fit(item: Item, rows: int, relu: bool, cfg, target) -> cost.Fit:
    from tvmcompress.targets import resolve_target

    lanes = vector_block(target, "float32")
    if target is None or cfg.decide != "auto":  # measuring only informs the auto choice
        return cost.assumed(item.block, lanes)
    preset = resolve_target(target)
    if preset.why_not_runnable_here() or "gpu" in target.keys:
        return cost.assumed(item.block, lanes)
    k, n = item.matrix.shape
    return cost.measure(rows, k, n, item.block, cfg.int8, relu, preset)


def _rows(layer: Layer) -> int:
    out = [int(d) for d in layer.call.ty.shape.values]
    return int(np.prod(out[:-1])) if layer.kind == "matmul" else out[0] * out[2] * out[3]


def decide(func: relax.Function, item: Item, zeroed: np.ndarray, cfg, target) -> Plan:
    """Sparse kernel or zeroed dense weight for one layer; recorded either way."""
    layer = item.layer
    bias, relu, fused = epilogue(func, layer)
    density = float(np.count_nonzero(sm.block_scores(zeroed, item.block, "l1"))) / max(
        1, zeroed.size // (item.block[0] * item.block[1]))
    fit = _fit(item, _rows(layer), relu, cfg, target)
    sparse = cfg.decide == "sparse" or (cfg.decide == "auto" and fit.sparse_wins(density))
    row = {"layer": layer.name, "op": layer.kind, "pattern": cfg.pattern,
           "block": f"{item.block[0]}x{item.block[1]}",
           "sparsity": round(1.0 - float(np.count_nonzero(zeroed)) / zeroed.size, 3),
           "break_even": round(fit.break_even, 3), "cost": fit.source,
           "dense_ms": None, "sparse_ms": None}
    if fit.source == "measured":  # assumed fits have no real times to show
        row.update(dense_ms=round(fit.dense_ms, 4), sparse_ms=round(fit.sparse_ms(density), 4))
    if not sparse:
        record(NAME, **row, storage="dense", bytes=layer.weight.nbytes,
               note=f"decide={cfg.decide}" if cfg.decide == "dense" else "dense is faster")
        return Plan(_dense(layer, zeroed), None, ())
    bsr = sm.to_bsr(zeroed, item.block, cfg.int8)
    record(NAME, **row, storage=f"bsr {'int8' if cfg.int8 else 'fp32'}", bytes=bsr.nbytes,
           fused="+".join(f for f, on in (("bias", bias is not None), ("relu", relu)) if on))
    kind = emit.emit_matmul if layer.kind == "matmul" else emit.emit_conv
    return Plan(lambda bb, call: kind(bb, call, bsr, bias, relu, target), *fused)


def _dense(layer: Layer, zeroed: np.ndarray):
    from tvmcompress.passes._quant_emit import contract

    weight = zeroed if layer.kind == "matmul" else zeroed.T.reshape(layer.weight.shape)
    return lambda bb, call: contract(call, call.args[0], relax.const(weight))

