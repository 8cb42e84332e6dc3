"""Export a ``torch.nn.Module`` to ONNX so it takes the same path as any ONNX model."""

from __future__ import annotations

import inspect
import io
from collections.abc import Sequence
from typing import Any

import onnx

from tvmcompress.errors import InputError, UnsupportedModelError

OPSET = 17


def export_torch(module: Any, example_inputs: Sequence[Any] | None) -> onnx.ModelProto:
    """Trace ``module`` on ``example_inputs`` with torch's TorchScript ONNX exporter.

    Input names are the parameter names of ``forward``; shapes are those of the examples.
    Outputs are named ``output`` (or ``output0``, ``output1``, ... for several).
    """
    import torch

    if example_inputs is None:
        raise InputError("Loading a torch.nn.Module needs example_inputs: a tuple of tensors "
                         "with the shapes to compile for, e.g. tc.load(module, example_inputs="
                         "(torch.randn(1, 3, 224, 224),))")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params[: len(example_inputs)]]
    names += [f"input{i}" for i in range(len(names), len(example_inputs))]
    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            outputs = module(*example_inputs)
        count = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
        output_names = ["output"] if count == 1 else [f"output{i}" for i in range(count)]
        torch.onnx.export(module, example_inputs, buffer, input_names=names,
                          output_names=output_names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    except Exception as err:
        raise UnsupportedModelError(
            f"torch.onnx.export failed on {type(module).__name__}: {err}") from err
    finally:
        module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())
