"""Multiply-accumulate counts per inference (batch 1) from the ONNX graph's inferred shapes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, or, where it leaves a compute node's output unknown (a Resize whose scales are
    computed, say), ONNX Runtime's symbolic shape inference, which follows such constants."""
    inferred = shape_inference.infer_shapes(model)
    known = {v.name for v in inferred.graph.value_info if all(d.HasField("dim_value") for d in
                                                              v.type.tensor_type.shape.dim)}
    known |= {o.name for o in inferred.graph.output}
    if all(n.output[0] in known for n in model.graph.node if n.op_type in _COMPUTE):
        return inferred
    try:
        import contextlib
        import io

        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        from edgewise.fsutil import scratch_cwd

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), scratch_cwd():
            symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        return symbolic if symbolic is not None else inferred
    except Exception:  # noqa: BLE001 - its failure only means the count stays a lower bound
        return inferred


_COMPUTE = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = _infer(model).graph
    out: dict[str, tuple[int, ...]] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        out[v.name] = tuple(dims)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def count_macs(model: onnx.ModelProto) -> int:
    """Conv, ConvTranspose, Gemm and MatMul MACs; symbolic dims (the batch) count as 1.

    Weights reached through DequantizeLinear keep their shape, so QDQ models count the same as fp32.
    """
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        try:
            if node.op_type in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
                w = shapes[node.input[3 if node.op_type == "QLinearConv" else 1]]
                y = shapes[node.output[0]]
                total += int(np.prod(y)) * int(np.prod(w[1:]))
            elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
                a = shapes[node.input[0]]
                y = shapes[node.output[0]]
                trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
                k = a[-2] if trans_a else a[-1]
                total += int(np.prod(y)) * int(k)
        except (KeyError, IndexError):
            continue  # a shape inference could not resolve; the count is then a lower bound
    return total
