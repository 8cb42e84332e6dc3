"""Input statistics for whitened low-rank splits: run the float module on calibration data
with TVM (a copy of ``main`` that returns every candidate layer's input) and accumulate
``X^T X`` per layer (over im2col patches for convs).

TVM rather than onnxruntime: the pass sees only the Relax module, so the statistics come from
the very graph being split (after earlier passes), whatever the model's source was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm

from tvmcompress.errors import ConfigError


def _arrays(params, calibration: Mapping[str, Any]) -> list[np.ndarray]:
    """Calibration arrays in parameter order, whole model batches of them."""
    arrays: list[np.ndarray] = []
    for p in params:
        shape = [int(d) for d in p.ty.shape.values]
        if p.name not in calibration:
            raise ConfigError(f"LowRankConfig.calibration has no input {p.name!r}; it needs "
                              f"{[q.name for q in params]}")
        arr = np.asarray(calibration[p.name], dtype=str(p.ty.dtype))
        if list(arr.shape[1:]) != shape[1:] or arr.shape[0] % shape[0]:
            raise ConfigError(f"LowRankConfig.calibration[{p.name!r}] has shape "
                              f"{list(arr.shape)}; expected N*{shape[0]} x {shape[1:]}")
        arrays.append(arr)
    if len({a.shape[0] for a in arrays}) > 1:
        raise ConfigError("LowRankConfig.calibration inputs hold different sample counts")
    return arrays


def _patches(x: np.ndarray, attrs, kh: int, kw: int, out_hw) -> np.ndarray:
    """im2col: rows are (I, kh, kw) patches in the order of ``kernel.reshape(O, -1)``."""
    top, left, bottom, right = (int(v) for v in attrs.padding)
    (sh, sw), (dh, dw) = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = np.lib.stride_tricks.sliding_window_view(
        xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :out_hw[0], :out_hw[1]]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def _gram(layer, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if layer.kind == "matmul":
        rows = x.reshape(-1, x.shape[-1])
    else:
        _, _, kh, kw = layer.weight.shape
        rows = _patches(x, layer.call.attrs, kh, kw, layer.out_shape[2:])
    return rows.T @ rows


def input_grams(mod: tvm.IRModule, layers, calibration: Mapping[str, Any]) -> dict:
    """``{layer name: X^T X}`` of each layer's input over all calibration samples."""
    from tvmcompress.passes.calibrate import run_with_outputs

    if not layers:
        return {}
    arrays = _arrays(mod["main"].params, calibration)
    grams: dict[str, np.ndarray] = {}
    for values in run_with_outputs(mod, [layer.call.args[0] for layer in layers], arrays):
        for layer, value in zip(layers, values, strict=True):
            g = _gram(layer, value)
            grams[layer.name] = grams[layer.name] + g if layer.name in grams else g
    return grams
