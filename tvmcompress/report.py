"""What a compile produced: params, weight bytes and MACs per op kind, latency, fidelity.

Statistics are read off the Relax IR (before lowering), so they count what the graph computes:
MACs for convolutions and matmuls, parameters as the elements of constant operands.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax
from tvm.ir.expr import Constant


@dataclass
class OpStats:
    """Totals for one op kind (e.g. ``nn.conv2d``)."""

    count: int = 0
    params: int = 0
    weight_bytes: int = 0
    macs: int = 0


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def _macs(op: str, call: relax.Call, out: tuple[int, ...] | None) -> int:
    """Multiply-accumulates of one call; 0 for ops that are not contractions."""
    if out is None:
        return 0
    if op in ("nn.conv1d", "nn.conv2d", "nn.conv3d"):
        weight = _shape(call.args[1])  # OIHW: O, I/groups, kernel...
        return math.prod(out) * math.prod(weight[1:]) if weight else 0
    if op in ("nn.conv1d_transpose", "nn.conv2d_transpose"):
        data, weight = _shape(call.args[0]), _shape(call.args[1])  # IOHW
        return math.prod(data) * math.prod(weight[1:]) if data and weight else 0
    if op == "call_tir" and call.args[0].name_hint.startswith("dequant_matmul"):
        x = _shape(call.args[1].fields[0])  # int4 kernel's operands: (x, packed weight, ...)
        return math.prod(out) * x[-1] if x else 0
    if op == "call_tir" and call.args[0].name_hint.startswith("bsr_matmul"):
        # BSR kernel (x, data, indices, indptr, ...): only the stored blocks are multiplied.
        x, data, _, indptr = call.args[1].fields[:4]
        rows, block = _shape(x), _shape(data)
        nnz_blocks = int(indptr.value.numpy()[-1]) if isinstance(indptr, Constant) else 0
        return rows[0] * nnz_blocks * math.prod(block[1:]) if rows and block else 0
    if op in ("matmul", "linear"):
        a = _shape(call.args[0])
        return math.prod(out) * a[-1] if a else 0
    return 0


def op_stats(mod: tvm.IRModule) -> dict[str, OpStats]:
    """Per op kind statistics of ``main``, in first-seen order."""
    stats: dict[str, OpStats] = defaultdict(OpStats)
    seen_constants: set[Constant] = set()

    def visit(expr: relax.Expr) -> None:
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        op = expr.op.name.removeprefix("relax.")
        row = stats[op]
        row.count += 1
        row.macs += _macs(op, expr, _shape(expr))
        # call_tir passes its operands as one tuple (e.g. packed int4 weights and scales).
        args = [f for a in expr.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
        for arg in args:
            # Scalars (GELU's 0.5, clip bounds) are literals of the formula, not parameters.
            if isinstance(arg, Constant) and isinstance(arg.ty, relax.TensorType) \
                    and arg not in seen_constants and arg.ty.shape is not None \
                    and math.prod(arg.ty.shape.values) > 1:
                seen_constants.add(arg)
                value = arg.value.numpy()
                row.params += value.size
                row.weight_bytes += value.nbytes

    relax.analysis.post_order_visit(mod["main"], visit)
    return dict(stats)


@dataclass
class Report:
    """Original vs compiled model, side by side; ``str()`` renders the table."""

    target: str
    original: dict[str, OpStats]
    compiled: dict[str, OpStats]
    compile_seconds: float = 0.0
    kernels: int = 0
    unscheduled: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def _total(stats: dict[str, OpStats], attr: str) -> int:
        return sum(getattr(s, attr) for s in stats.values())

    def to_dict(self) -> dict[str, Any]:
        def rows(stats):
            return {op: vars(s) for op, s in stats.items()}

        return {"target": self.target, "original": rows(self.original),
                "compiled": rows(self.compiled), "compile_seconds": self.compile_seconds,
                "kernels": self.kernels, "unscheduled": self.unscheduled,
                "latency_ms": self.latency_ms, "fidelity": self.fidelity, "notes": self.notes,
                "passes": self.passes}

    def __str__(self) -> str:
        lines = [f"tvmcompress report (target {self.target})",
                 f"{'op kind':<22}{'count':>7}{'params':>12}{'weight MB':>11}{'MMACs':>11}"
                 f"   -> {'count':>6}{'params':>12}{'weight MB':>11}{'MMACs':>11}"]
        for op in dict.fromkeys([*self.original, *self.compiled]):
            a, b = self.original.get(op, OpStats()), self.compiled.get(op, OpStats())
            lines.append(f"{op:<22}{_cells(a)}   -> {_cells(b, 6)}")
        total_a, total_b = OpStats(), OpStats()
        for attr in ("count", "params", "weight_bytes", "macs"):
            setattr(total_a, attr, self._total(self.original, attr))
            setattr(total_b, attr, self._total(self.compiled, attr))
        lines.append(f"{'total':<22}{_cells(total_a)}   -> {_cells(total_b, 6)}")
        lines.append(f"compile time {self.compile_seconds:.1f} s; {self.kernels} kernels")
        if self.unscheduled:
            lines.append(f"WARNING: {len(self.unscheduled)} kernel(s) have no schedule (plain "
                         f"loops, slow): {', '.join(self.unscheduled[:8])}"
                         + (" ..." if len(self.unscheduled) > 8 else ""))
        for name, ms in self.latency_ms.items():
            lines.append(f"latency {name:<28} {ms:9.3f} ms")
        for name, f in self.fidelity.items():
            top1 = (f", top-1 agreement {f['top1_agreement']:.4f}"
                    if "top1_agreement" in f else "")
            lines.append(f"fidelity {name:<27} max abs err {f['max_abs_err']:.3g}, "
                         f"cosine {f['cosine']:.6f}{top1}")
        lines.extend(_pass_tables(self.passes))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _cells(s: OpStats, count_width: int = 7) -> str:
    return (f"{s.count:>{count_width}}{s.params:>12,}{s.weight_bytes / 1e6:>11.3f}"
            f"{s.macs / 1e6:>11.2f}")


def _pass_tables(rows: list[dict[str, Any]]) -> list[str]:
    """One table per pass, its columns the union of the fields its rows recorded."""
    lines = []
    for name in dict.fromkeys(r["pass"] for r in rows):
        own = [{k: v for k, v in r.items() if k != "pass"} for r in rows if r["pass"] == name]
        columns = list(dict.fromkeys(k for r in own for k in r))
        cells = [[_fmt(r.get(c, "")) for c in columns] for r in own]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines.append(f"pass {name}:")
        for row in [columns, *cells]:
            lines.append(("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths,
                                                                   strict=True))).rstrip())
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
