"""Quantize float ``matmul``/``conv2d`` layers with constant weights: int8 static (calibrated)
or dynamic, int4 weight-only (packed, dequantized inside the matmul), fp16/bf16, and the
exotic binary/ternary/power-of-two weights; per-layer mixed precision and exclusions.

Layers are named ``matmul<i>`` / ``conv2d<i>`` in program order (the report lists them);
``exclude`` and ``per_layer`` take those names, the IR variable names, or op kinds. The float
tail of an int8 layer (scale, bias, activation, the next layer's quantize) is elementwise, so
FuseOps folds it into the integer matmul's kernel (fused_matmul_subtract_cast_multiply_add_
relu_divide_round_..._cast): requantization happens in the consumer, no float tensor between.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax

from tvmcompress.config import PassConfig, register_pass
from tvmcompress.errors import ConfigError
from tvmcompress.passes import _quant_emit as emit
from tvmcompress.passes import _quant_math as qm
from tvmcompress.passes._quant_plan import (
    BITS,
    EXOTIC,
    Layer,
    auto_activation,
    find_layers,
    int8_keeps_float,
    plan_layer,
    weight_correction,
)
from tvmcompress.passes.calibrate import collect
from tvmcompress.passes.record import record

SCHEMES = ("int8", "int8-dynamic", "int4", "fp16", "bf16", "binary", "ternary", "pow2")
METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATIONS = ("auto", *qm.ACTIVATION_MODES)
KEEP_FLOAT = ("fp32", "float32", "none")


def _choice(field_name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"QuantizeConfig.{field_name} = {value!r} is not one of "
                          f"{', '.join(map(str, allowed))}")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    """scheme: default for every eligible layer. calibration (int8 static, bias correction):
    dict name -> array (samples on axis 0), .npz path, or iterable of such dicts. method and
    percentile: how activation ranges are chosen. activation: per-tensor activation encoding
    ("auto": uint8-asym on x86, int8-sym on ARM/CUDA). group_size/symmetric: int4 groups
    (asymmetric by default: on all-MiniLM-L6-v2 g=32 it kept cosine 0.976 vs 0.970).
    exclude: layer names, IR var names or op kinds ("matmul", "nn.conv2d") kept float.
    per_layer: layer name -> scheme ("fp32" keeps float), overriding scheme. bias_correction:
    fold the calibration mean of the weight-rounding error into the output. per_token:
    int8-dynamic activation scale per row (last axis) instead of per tensor."""

    scheme: str = "int8-dynamic"
    calibration: Any = dataclasses.field(default=None, compare=False)  # arrays: no ==
    method: str = "minmax"
    percentile: float = 99.99
    activation: str = "auto"
    group_size: int = 32
    symmetric: bool = False
    exclude: tuple[str, ...] = ()
    per_layer: Mapping[str, str] = dataclasses.field(default_factory=dict)
    bias_correction: bool = False
    per_token: bool = True

    def __post_init__(self) -> None:
        _choice("scheme", self.scheme, SCHEMES)
        _choice("method", self.method, METHODS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("group_size", self.group_size, (32, 64, 128))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"QuantizeConfig.percentile = {self.percentile} must be in "
                              "(50, 100], e.g. 99.99")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for name, scheme in dict(self.per_layer).items():
            _choice(f"per_layer[{name!r}]", scheme, SCHEMES + KEEP_FLOAT)
        needs = [s for s in (self.scheme, *dict(self.per_layer).values()) if s == "int8"]
        if (needs or self.bias_correction) and self.calibration is None:
            raise ConfigError("QuantizeConfig.calibration is required for scheme 'int8' "
                              "(static) and bias_correction: give {input name: samples}, an "
                              ".npz path or batches, or use scheme='int8-dynamic'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: in-memory calibration data is described, not copied."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cal = self.calibration
        data["calibration"] = cal if cal is None or isinstance(cal, str) else str(cal) if \
            hasattr(cal, "__fspath__") else f"<in-memory {type(cal).__name__}>"
        data["exclude"], data["per_layer"] = list(self.exclude), dict(self.per_layer)
        return {"type": type(self).__name__, "version": self.version, "data": data}


def _scheme_for(layer: Layer, cfg: QuantizeConfig) -> tuple[str | None, str]:
    keys = (layer.name, layer.var.name)
    for key in keys:
        if key in cfg.per_layer:
            s = cfg.per_layer[key]
            return (None, f"per_layer[{key!r}] = {s!r}") if s in KEEP_FLOAT else (s, "per_layer")
    hit = [e for e in cfg.exclude if e in (*keys, layer.kind, f"nn.{layer.kind}",
                                           f"relax.{layer.kind}")]
    if hit:
        return None, f"excluded by {hit[0]!r}"
    if not np.all(np.isfinite(layer.weight)):
        return None, "weight holds NaN/Inf: left float"
    why = int8_keeps_float(layer) if cfg.scheme in ("int8", "int8-dynamic") else None
    return (None, why) if why else (cfg.scheme, "")



def _calibrate(mod: tvm.IRModule, layers: list[Layer], cfg: QuantizeConfig) -> dict:
    if not layers:
        return {}
    stats = collect(mod, [layer.call.args[0] for layer in layers],
                    [layer.in_axis for layer in layers], cfg.calibration)
    return {layer.name: s for layer, s in zip(layers, stats, strict=True)}


def _with_correction(fn, corr: np.ndarray, call_shape):
    def emit_corrected(bb, call):
        return relax.op.add(bb.emit(fn(bb, call)), emit.const(corr.reshape(call_shape), "float32"))

    return emit_corrected


def _check_names(cfg: QuantizeConfig, layers: list[Layer], skipped: list[str]) -> None:
    """Names in ``exclude``/``per_layer`` that match nothing are typos: say what exists."""
    known = {n for la in layers for n in (la.name, la.var.name)} | set(skipped)
    kinds = {k for la in layers for k in (la.kind, f"nn.{la.kind}", f"relax.{la.kind}")}
    for field_name, names in (("exclude", cfg.exclude), ("per_layer", list(cfg.per_layer))):
        unknown = [n for n in names if n not in known | kinds | {"matmul", "nn.conv2d"}]
        if unknown:
            raise ConfigError(f"QuantizeConfig.{field_name} names {unknown}, which this model "
                              f"does not have; its layers: {', '.join(la.name for la in layers)}"
                              " (or op kinds matmul, nn.conv2d)")


def _plan_one(layer: Layer, scheme: str | None, reason: str, cfg: QuantizeConfig,
              stats: dict, mode: str):
    """The emit function for one layer (None: stays float); records the decision."""
    row = {"layer": layer.name, "op": layer.kind, "scheme": scheme or "fp32",
           "bits": BITS.get(scheme or "fp32", EXOTIC.get(scheme, (0,))[0]),
           "bytes_before": layer.weight.nbytes}
    if scheme is not None and layer.name in stats and not stats[layer.name].finite:
        scheme, reason = None, "calibration activations all NaN/Inf: left float"
    if scheme is None:
        record("Quantize", **{**row, "scheme": "fp32", "bits": 32},
               bytes_after=layer.weight.nbytes, note=reason)
        return None
    fn, fields, deq = plan_layer(layer, scheme, cfg, stats.get(layer.name), mode)
    if cfg.bias_correction and deq is not None:
        corr = weight_correction(layer, deq, stats[layer.name].mean)
        n = layer.weight.shape[layer.out_axis]
        fn = _with_correction(fn, corr, emit.channel_shape(layer.call, n))
        fields["bias_corr"] = float(np.abs(corr).max())
    record("Quantize", **row, **fields)
    return fn


def quantize_module(mod: tvm.IRModule, cfg: QuantizeConfig) -> tvm.IRModule:
    """Rewrite ``main``'s eligible layers; every decision is recorded for the report."""
    layers, skipped = find_layers(mod["main"])
    _check_names(cfg, layers, [name for name, _ in skipped])
    for name, reason in skipped:
        record("Quantize", layer=name, scheme="fp32", note=reason)
    chosen = [(layer, *_scheme_for(layer, cfg)) for layer in layers]
    mode, why = auto_activation() if cfg.activation == "auto" else (cfg.activation, "configured")
    stats = _calibrate(mod, [la for la, s, _ in chosen
                             if s == "int8" or (cfg.bias_correction and s)], cfg)
    plans = [(layer.var, _plan_one(layer, scheme, reason, cfg, stats, mode))
             for layer, scheme, reason in chosen]
    if any(s == "int8" for _, s, _ in chosen):
        record("Quantize", layer="(activations)", scheme=mode, note=why)
    rewriter = emit.Rewriter(mod, [(v, fn) for v, fn in plans if fn is not None])
    func = rewriter.visit_expr(mod["main"])
    rewriter.builder_.update_func(mod.get_global_var("main"), func)
    return rewriter.builder_.finalize()


@register_pass(QuantizeConfig)
def quantize(config: QuantizeConfig) -> tvm.transform.Pass:
    """The Quantize module pass for ``config``."""

    @tvm.transform.module_pass(opt_level=0, name="Quantize")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return quantize_module(mod, config)

    return _pass
