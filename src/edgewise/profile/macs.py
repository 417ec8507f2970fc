"""Multiply-accumulate counts per inference (batch 1) from the ONNX graph's inferred shapes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
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
