"""Low-rank splitting: ``matmul(x, W)`` -> ``matmul(matmul(x, A), B)`` and a k x k conv ->
(k x k conv with r outputs, 1 x 1 conv) or (k x 1 conv, 1 x k conv), by truncated SVD.

A split pays only when ``r (m + n)`` is well below ``m n``: each layer is split only when the
two thin contractions cost at most ``min_gain`` of its MACs. MACs are an estimate of latency
(default schedules are not tuned yet); layers that do not pay stay whole, with the reason in
the report. With ``calibration`` the SVD is whitened by the layer inputs (SVD-LLM style).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax

from tvmcompress.config import PassConfig, register_pass
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _lowrank_plan as lp
from tvmcompress.passes._lowrank_choose import choose_all
from tvmcompress.passes.record import record

CONV_MODES = ("channel", "spatial", "auto")
MODES = ("energy", "rank", "rank_ratio", "macs_budget")


@dataclasses.dataclass(frozen=True)
class LowRankConfig(PassConfig):
    """Set exactly one of ``energy``, ``rank``, ``rank_ratio``, ``macs_budget``.

    Parameters
    ----------
    energy
        Keep this fraction (0, 1] of each layer's squared singular values.
    rank
        One rank for every layer (layers it does not fit are left whole), or a dict layer name
        (``matmul3``, ``conv2d0``) or output var name -> rank; other layers stay whole.
    rank_ratio
        Rank as a fraction (0, 1] of each layer's full rank.
    macs_budget
        Target fraction (0, 1] of the model's matmul+conv MACs; ranks chosen greedily by
        energy kept per MAC across layers.
    round_to
        Ranks from energy/rank_ratio/macs_budget are rounded up to multiples of this.
    min_gain
        Split only when the split costs at most this fraction of the layer's MACs.
    conv_mode
        ``"channel"`` (k x k with r outputs, then 1 x 1), ``"spatial"`` (k x 1, then 1 x k) or
        ``"auto"`` (whichever costs fewer MACs at the chosen rank).
    exclude
        Layer or var names never split.
    calibration
        Optional inputs by name (leading axis: samples, a multiple of the model's batch) to
        whiten matmul and channel splits; not serialized by ``to_dict``.
    """

    energy: float | None = None
    rank: int | dict[str, int] | None = None
    rank_ratio: float | None = None
    macs_budget: float | None = None
    round_to: int = 8
    min_gain: float = 0.8
    conv_mode: str = "auto"
    exclude: tuple[str, ...] = ()
    calibration: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        chosen = [m for m in MODES if getattr(self, m) is not None]
        if len(chosen) != 1:
            raise ConfigError(f"LowRankConfig: set exactly one of {', '.join(MODES)}; got "
                              f"{chosen or 'none'} (e.g. LowRankConfig(energy=0.95))")
        for name in ("energy", "rank_ratio", "macs_budget"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"LowRankConfig.{name} must be in (0, 1], got {value}")
        ranks = self.rank.items() if isinstance(self.rank, dict) else [("rank", self.rank)]
        for key, r in ranks if self.rank is not None else []:
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ConfigError(f"LowRankConfig.rank[{key!r}] must be an int >= 1, got {r!r}")
        if self.round_to < 1:
            raise ConfigError(f"LowRankConfig.round_to must be >= 1, got {self.round_to}")
        if not self.min_gain > 0:
            raise ConfigError(f"LowRankConfig.min_gain must be > 0 (0.8: split costs <= 80% "
                              f"of the MACs), got {self.min_gain}")
        if self.conv_mode not in CONV_MODES:
            raise ConfigError(f"LowRankConfig.conv_mode must be one of {CONV_MODES}, got "
                              f"{self.conv_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["data"]["calibration"] = None  # arrays do not belong in JSON manifests
        return data


def _conv(x, w, call, strides, padding, dilation):
    return relax.op.nn.conv2d(x, relax.const(w), strides=strides, padding=padding,
                              dilation=dilation, groups=1, out_dtype=call.attrs.out_dtype)


@relax.expr_functor.mutator
class _Splitter(relax.PyExprMutator):
    """Replaces each planned call by two thinner ones; everything else is copied."""

    def __init__(self, mod: tvm.IRModule, plans: dict[relax.Call, tuple]):
        super().__init__(mod)
        self.plans = plans

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call not in self.plans:
            return super().visit_call_(call)
        mode, first, second = self.plans[call]
        x = self.visit_expr(call.args[0])
        if mode == "matmul":
            mid = self.builder_.emit(relax.op.matmul(x, relax.const(first), call.attrs.out_dtype))
            return relax.op.matmul(mid, relax.const(second), call.attrs.out_dtype)
        a = call.attrs
        (sh, sw), (dh, dw) = [int(v) for v in a.strides], [int(v) for v in a.dilation]
        top, left, bottom, right = (int(v) for v in a.padding)
        if mode == "channel":
            mid = _conv(x, first, call, (sh, sw), (top, left, bottom, right), (dh, dw))
            return _conv(self.builder_.emit(mid), second, call, (1, 1), (0, 0, 0, 0), (1, 1))
        # Spatial: the H stride/padding/dilation go to the k x 1 conv, the W ones to the 1 x k.
        mid = self.builder_.emit(_conv(x, first, call, (sh, 1), (top, 0, bottom, 0), (dh, 1)))
        return _conv(mid, second, call, (1, sw), (0, left, 0, right), (1, dw))


def _grams(mod: tvm.IRModule, layers: list[lp.Layer], config: LowRankConfig) -> dict:
    if config.calibration is None:
        return {}
    from tvmcompress.passes._lowrank_calib import input_grams

    return input_grams(mod, [x for x in layers if x.reason is None], config.calibration)


@register_pass(LowRankConfig)
def lowrank_split(config: LowRankConfig) -> tvm.transform.Pass:
    """The LowRankSplit pass for ``config`` (see :class:`LowRankConfig`)."""

    @tvm.transform.module_pass(opt_level=0, name="LowRankSplit")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        layers = lp.find_layers(mod["main"])
        for layer in layers:
            if layer.reason is None and {layer.name, layer.var} & set(config.exclude):
                layer.reason = "excluded by config"
        rows, plans = choose_all(mod, layers, config, _grams(mod, layers, config))
        for row in rows:
            record("LowRankSplit", **row)
        if not plans:
            return mod
        splitter = _Splitter(mod, plans)
        gv = mod.get_global_var("main")
        splitter.builder_.update_func(gv, splitter.visit_expr(mod["main"]))
        return splitter.builder_.get()

    return _pass
