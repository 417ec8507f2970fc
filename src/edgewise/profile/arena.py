"""Activation memory from tensor lifetimes: the peak of simultaneously live tensors (a planner's lower bound)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference


def live_tensor_peak(model: onnx.ModelProto, bytes_per_element: int = 4) -> int:
    """Largest total size of activations alive at once, batch 1, nodes run in graph order.

    A tensor lives from the node that produces it (the graph input: from the start) to its last
    consumer (a graph output: to the end). Weights are not counted; they live in flash or the model file.
    """
    g = shape_inference.infer_shapes(model).graph
    inits = {i.name for i in g.initializer}
    sizes: dict[str, int] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        sizes[v.name] = int(np.prod(dims)) * bytes_per_element if dims else bytes_per_element
    n = len(g.node)
    start: dict[str, int] = {v.name: 0 for v in g.input if v.name not in inits}
    end: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for t in node.output:
            start.setdefault(t, i)
        for t in node.input:
            if t in start:
                end[t] = i
    for o in g.output:
        end[o.name] = n
    peak = 0
    for i in range(n):
        live = sum(sizes.get(t, 0) for t, s in start.items() if s <= i <= end.get(t, s))
        peak = max(peak, live)
    return peak
