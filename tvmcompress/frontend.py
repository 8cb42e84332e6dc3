"""ONNX (or PyTorch) in, Relax IRModule out: check, fix input shapes, fold, import.

TVM's importer fails on real exports (torch's MiniLM, Paddle's OCR models) unless shape
computations and constants are folded at the ONNX level first, so every model goes through
onnxsim's shape inference and constant folding (graph optimizations off) before import.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import tvm

from tvmcompress.errors import InputError, UnsupportedModelError

logger = logging.getLogger(__name__)

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


# TVM's importer dispatches on op type alone; it implements these domains' ops.
IMPORTABLE_DOMAINS = ("ai.onnx", "com.microsoft")


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(int(d) for d in data["shape"]), data["dtype"])


@dataclass
class Model:
    """A loaded model: the folded ONNX graph, its Relax module and its signature."""

    onnx_model: onnx.ModelProto
    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str = "<onnx.ModelProto>"
    notes: list[str] = field(default_factory=list)

    @property
    def signature(self):
        """Inputs and outputs as a runtime.Signature."""
        from tvmcompress.runtime import Signature

        return Signature([s.to_dict() for s in self.inputs], [s.to_dict() for s in self.outputs])


def load(
    source: str | Path | onnx.ModelProto | Any,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> Model:
    """Load an ONNX model (path or ModelProto) or a ``torch.nn.Module`` into Relax.

    Parameters
    ----------
    source
        A ``.onnx`` path, an ``onnx.ModelProto``, or a ``torch.nn.Module`` (then
        ``example_inputs`` is required and the module is exported to ONNX).
    input_shapes
        Static shapes for inputs with dynamic dimensions, by input name.
    example_inputs
        Example tensors for a PyTorch module; their shapes become the input shapes.
    """
    model, name = _read(source, example_inputs)
    _check(model, name)
    _drop_initializer_inputs(model)
    shapes = _fix_input_shapes(model, input_shapes or {}, name)
    model, notes = _fold(model, shapes, name)
    _check_supported(model, name)
    mod = _import(model, shapes, name)
    inputs = [TensorSpec(n, tuple(s), _dtype_of(_graph_input(model, n), n))
              for n, s in shapes.items()]
    return Model(model, mod, inputs, _output_specs(model, mod), source=name, notes=notes)


def _read(source: Any, example_inputs: Sequence[Any] | None) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return onnx.ModelProto.FromString(source.SerializeToString()), "<onnx.ModelProto>"
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise UnsupportedModelError(f"Model file {str(path)!r} does not exist")
        try:
            return onnx.load(str(path)), str(path)
        except Exception as err:
            raise UnsupportedModelError(f"{path} is not a readable ONNX model: {err}") from err
    if _is_torch_module(source):
        from tvmcompress.torch_export import export_torch

        return export_torch(source, example_inputs), type(source).__name__
    raise UnsupportedModelError(
        f"Cannot load a {type(source).__name__}: pass a .onnx path, an onnx.ModelProto, "
        "or a torch.nn.Module with example_inputs"
    )


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module"
               for c in type(obj).__mro__)


def _check(model: onnx.ModelProto, name: str) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise UnsupportedModelError(f"The ONNX checker rejects {name}: {err}") from err


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR v3 models list weights among graph inputs; they are constants, not inputs.

    Initializers outside the inputs are valid from IR version 4 on, so the model says so.
    """
    weights = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in weights]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)


def _graph_input(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    return next(i for i in model.graph.input if i.name == name)


def _dtype_of(value: onnx.ValueInfoProto, name: str) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in ONNX_DTYPES:
        raise UnsupportedModelError(
            f"Input/output {name!r} has ONNX element type "
            f"{onnx.TensorProto.DataType.Name(elem)}, which tvmcompress does not support"
        )
    return ONNX_DTYPES[elem]


def _fix_input_shapes(
    model: onnx.ModelProto, given: Mapping[str, Sequence[int]], name: str
) -> dict[str, list[int]]:
    """Return a static shape per input, taking dynamic dims from ``given``."""
    names = [i.name for i in model.graph.input]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputError(f"input_shapes names {unknown}, which {name} does not have; "
                         f"its inputs are {names}")
    shapes, dynamic = {}, []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                    else (d.dim_param or "?") for d in dims]
        if value.name in given:
            shape = [int(d) for d in given[value.name]]
            _check_given_shape(value.name, declared, shape)
        elif all(isinstance(d, int) for d in declared):
            shape = declared
        else:
            dynamic.append(f"{value.name}: {declared}")
            continue
        shapes[value.name] = shape
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = size
    if dynamic:
        raise InputError(
            f"{name} has dynamic input dimensions; give static shapes for them with "
            "input_shapes={name: shape} (CLI: --input-shape NAME:D1,D2,...): "
            + "; ".join(dynamic)
        )
    return shapes


def _check_given_shape(name: str, declared: list, shape: list[int]) -> None:
    if len(shape) != len(declared):
        raise InputError(f"input_shapes[{name!r}] = {shape} has rank {len(shape)}, but the model "
                         f"declares rank {len(declared)}: {declared}")
    for axis, (want, got) in enumerate(zip(declared, shape, strict=True)):
        if got <= 0 or (isinstance(want, int) and want != got):
            allowed = want if isinstance(want, int) else "a positive integer"
            raise InputError(f"input_shapes[{name!r}] = {shape}: dimension {axis} must be "
                             f"{allowed}, got {got}")


def _fold(
    model: onnx.ModelProto, shapes: dict[str, list[int]], name: str
) -> tuple[onnx.ModelProto, list[str]]:
    """Shape inference + constant folding; on failure keep the model as it is, with a note."""
    import onnxsim

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            folded, _ = onnxsim.simplify(model, overwrite_input_shapes=shapes,
                                         perform_optimization=False)
    except Exception as err:  # onnxsim's failures are not the user's: import as is.
        note = f"constant folding of {name} failed ({err}); imported unfolded"
        logger.warning("%s", note)
        return model, [note]
    return folded, []


def _check_supported(model: onnx.ModelProto, name: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from tvmcompress.onnx_ops import CONVERTERS

    supported = set(_get_convert_map()) | {"Constant", "If"} | set(CONVERTERS)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    first_use: dict[tuple[str, str], str] = {}
    for i, node in enumerate(model.graph.node):
        domain = node.domain or "ai.onnx"
        if domain not in IMPORTABLE_DOMAINS or node.op_type not in supported:
            first_use.setdefault((domain, node.op_type), node.name or f"#{i}")
    if first_use:
        lines = [f"  {op} (domain {dom}, opset {opsets.get(dom, '?')}): first used by node {n!r}"
                 for (dom, op), n in first_use.items()]
        raise UnsupportedModelError(
            f"{name} uses {len(lines)} operator type(s) tvmcompress cannot import:\n"
            + "\n".join(lines)
        )


def _import(model: onnx.ModelProto, shapes: dict[str, list[int]], name: str) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import onnx_frontend

    class TracingImporter(onnx_frontend.ONNXGraphImporter):
        """TVM's importer, remembering the node it is converting for error messages."""

        current: onnx.NodeProto | None = None

        def _parse_value_proto(self, value_proto):
            if isinstance(value_proto, onnx.NodeProto):
                self.current = value_proto
            return super()._parse_value_proto(value_proto)

        def _check_for_unsupported_ops(self, graph):
            """Already done by ``_check_supported``, which knows our converters too."""

        def _convert_operator(self, op_name, inputs, attrs, opset):
            """Our converters (tvmcompress.onnx_ops: quantized ops TVM lacks) come first."""
            from tvmcompress.onnx_ops import CONVERTERS

            if op_name not in CONVERTERS:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            return self.bb.normalize(
                CONVERTERS[op_name](self.bb, inputs, attrs, [self._nodes, self._params]))

    dtypes = {n: _dtype_of(_graph_input(model, n), n) for n in shapes}
    importer = TracingImporter(shapes, dtypes, keep_params_in_input=False, sanitize=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            mod = importer.from_onnx(model.graph, opset)
    except Exception as err:
        node = importer.current
        where = (f"node {node.name!r} (op {node.op_type}, opset {opset})" if node is not None
                 else "graph inputs")
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        error = UnsupportedModelError(
            f"TVM's ONNX importer failed on {name} at {where}: {first_line}")
        error.tvm_error = err  # the full TVM error, for bug reports
        raise error from None  # the user's first sight is the node, not TVM's stack
    return tvm.relax.transform.FoldConstant()(mod)


def _output_specs(model: onnx.ModelProto, mod: tvm.IRModule) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, tvm.relax.TupleType) else [ret]
    names = [o.name for o in model.graph.output]
    if len(fields) != len(names):
        names = [f"output{i}" for i in range(len(fields))]
    specs = []
    for out_name, ty in zip(names, fields, strict=True):
        if not isinstance(ty, tvm.relax.TensorType) or ty.shape is None:
            raise UnsupportedModelError(f"Output {out_name!r} has no static tensor shape ({ty})")
        specs.append(TensorSpec(out_name, tuple(int(d) for d in ty.shape.values), str(ty.dtype)))
    return specs
