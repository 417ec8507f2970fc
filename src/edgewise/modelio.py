"""Load, validate and describe ONNX models: the one place that turns a file into a checked ModelProto."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from edgewise.errors import ModelError

MIN_OPSET = 7  # older graphs are lifted to UPGRADE_TO on load
UPGRADE_TO = 13
# Protobuf cannot serialize a message over 2 GiB: larger models keep their weights in a .data file.
LARGE_MODEL_BYTES = 1_800_000_000
# Operator domains ONNX Runtime implements (its CPU build carries the Microsoft contrib ops).
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # str for symbolic dims such as the batch

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read and check an ONNX file; every failure is a ModelError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        for name in ("model.onnx",):
            if (path / name).is_file():
                return load_onnx(path / name)
        raise ModelError(f"{path} is a directory without a model.onnx")
    try:
        model = onnx.load(str(path))  # external data is read from beside the file
    except Exception as e:  # protobuf raises DecodeError, others raise ValueError/OSError
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not an ONNX model or its external data is missing ({first})") from e
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (empty or non-ONNX file)")
    try:
        onnx.checker.check_model(str(path))  # by path: works for models over 2 GiB too
    except Exception as e:
        raise ModelError(f"{path}: invalid ONNX model ({str(e).splitlines()[0]})") from e
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is not supported (need >= {MIN_OPSET}); re-export it")
    unsupported = unsupported_op(model)
    if unsupported:
        raise ModelError(f"{path}: {unsupported}")
    if opset < 11:
        model = upgrade_opset(model, UPGRADE_TO)
    return model


def unsupported_op(model: onnx.ModelProto) -> str | None:
    """The first operator no runtime here can run (unknown domain or op), named with its node; else None."""
    for node in model.graph.node:
        domain = node.domain or ""
        known = domain in KNOWN_DOMAINS and (domain not in ("", "ai.onnx", "ai.onnx.ml")
                                             or onnx.defs.has(node.op_type, domain))
        if not known and not any(f.name == node.op_type and f.domain == domain for f in model.functions):
            where = f"node {node.name!r}" if node.name else f"the node producing {node.output[0]!r}"
            return (f"operator {node.op_type} ({'domain ' + domain if domain else 'ai.onnx'}) in {where} has no "
                    "implementation in ONNX Runtime; replace it or export without it")
    return None


def save_model(model: onnx.ModelProto, path: Path | str) -> None:
    """Save a model; one over 2 GiB keeps its weights in `<name>.data` beside it (left untouched in memory)."""
    path = Path(path)
    if model.ByteSize() <= LARGE_MODEL_BYTES:
        onnx.save(model, str(path))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving as external data rewrites the message it is given
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, target: int = 13) -> onnx.ModelProto:
    """Per-channel quantization needs opset >= 13; onnx's version converter lifts older models."""
    if default_opset(model) >= target:
        return model
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as e:
        raise ModelError(f"cannot upgrade model from opset {default_opset(model)} to {target}: {e}") from e


def _spec(v: onnx.ValueInfoProto) -> TensorSpec:
    t = v.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return TensorSpec(v.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name, tuple(dims))


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    init = _initializer_names(model)
    return [_spec(v) for v in model.graph.input if v.name not in init]


def outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def sample_shape(model: onnx.ModelProto) -> tuple[int | str, ...]:
    """The single input's shape without the batch dimension."""
    ins = inputs(model)
    if len(ins) != 1:
        names = ", ".join(f"{s.name}{list(s.shape)}" for s in ins)
        raise ModelError(f"the model has {len(ins)} inputs ({names}): give data as an .npz with one array per "
                         "input name, samples stacked on a new leading axis")
    return ins[0].shape[1:]


def image_size(model: onnx.ModelProto) -> int | None:
    """The side of a model's square image input (N, C, S, S with 1 or 3 channels), which an image set given
    without a size loads at; None for anything else."""
    ins = inputs(model)
    shape = ins[0].shape[1:] if len(ins) == 1 else ()
    if len(shape) == 3 and shape[0] in (1, 3) and isinstance(shape[1], int) and shape[1] > 1 and shape[1] == shape[2]:
        return int(shape[1])
    return None


def pin_input_shape(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """Fix symbolic non-batch input dims to the data's sample shape (imported models often leave H, W open).

    Refuses when a fixed dim disagrees with the data.
    """
    model_shape = sample_shape(model)
    if len(model_shape) != len(shape):
        raise ModelError(f"data samples have shape {tuple(shape)} but the model expects {model_shape}")
    for want, have in zip(model_shape, shape):
        if isinstance(want, int) and want > 0 and want != have:
            raise ModelError(f"data samples have shape {tuple(shape)} but the model expects {model_shape}")
    if all(isinstance(d, int) and d > 0 for d in model_shape):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = _initializer_names(m)
    inp = next(v for v in m.graph.input if v.name not in init)
    for d, value in zip(list(inp.type.tensor_type.shape.dim)[1:], shape):
        d.Clear()
        d.dim_value = int(value)
    # Stale inferred shapes would contradict the pinned dims; let inference redo them.
    del m.graph.value_info[:]
    return m


def weight_bytes(model: onnx.ModelProto, op_types: tuple[str, ...] | None = None) -> int:
    """Bytes of constant tensors (initializers and Constant nodes), optionally only those feeding the
    given op types (e.g. MatMul/Gemm)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            inits[node.output[0]] = value
    if op_types is None:
        names = set(inits)
    else:
        names = {n for node in model.graph.node if node.op_type in op_types for n in node.input if n in inits}
    total = 0
    for n in names:
        t = inits[n]
        total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total



def embedding_tensor(model: onnx.ModelProto) -> str:
    """The tensor a classifier's last Gemm/MatMul reads: the penultimate embedding, the usual split point."""
    for node in reversed(model.graph.node):
        if node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits"):
            return node.input[0]
    raise ModelError("the model has no final Gemm/MatMul to split at; name the tensor")


def tensor_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}


def expose(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The same model with an intermediate tensor as a second output (for features-mode escalation)."""
    if tensor not in tensor_names(model):
        raise ModelError(f"the model has no tensor named {tensor!r}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if tensor not in {o.name for o in m.graph.output}:
        m.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return m


def split_at(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The tail of `model` from `tensor` to its outputs: a model whose single input is that tensor."""
    if tensor not in tensor_names(model):
        raise ModelError(f"the model has no tensor named {tensor!r}")
    if tensor in {i.name for i in model.graph.input}:
        raise ModelError(f"{tensor!r} is the model's input; split at an intermediate tensor")
    inferred = onnx.shape_inference.infer_shapes(model)
    from onnx.utils import Extractor

    try:
        tail = Extractor(inferred).extract_model([tensor], [o.name for o in model.graph.output])
    except Exception as e:
        raise ModelError(f"cannot split at {tensor!r}: {e}") from e
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    if tensor not in known or not known[tensor].type.tensor_type.HasField("shape"):
        raise ModelError(f"the shape of {tensor!r} cannot be inferred; cannot make it a model input")
    inp = tail.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if dims:  # the batch stays symbolic, as it is in the whole model
        dims[0].Clear()
        dims[0].dim_param = "batch"
    available = {tensor} | {i.name for i in tail.graph.initializer} | {o for n in tail.graph.node for o in n.output}
    if any(i and i not in available for n in tail.graph.node for i in n.input):
        raise ModelError(f"{tensor!r} does not cut the graph: later layers also read earlier tensors")
    onnx.checker.check_model(tail)
    return tail
