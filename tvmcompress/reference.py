"""onnxruntime as the numerical and speed reference for the original model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx


def ort_session(model: onnx.ModelProto | str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def ort_run(
    model: onnx.ModelProto | str, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``inputs`` by name, computed by onnxruntime."""
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def fidelity(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """How far ``actual`` moved from ``reference``: max abs error and cosine similarity."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    norm = np.linalg.norm(ref) * np.linalg.norm(act)
    cosine = float(ref @ act / norm) if norm > 0 else float(np.array_equal(ref, act))
    return {"max_abs_err": float(np.max(np.abs(ref - act))) if ref.size else 0.0,
            "cosine": cosine}
