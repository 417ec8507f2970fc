"""Shrink the serialized model without changing what it computes: the last step before a bundle.

On tiny models the ONNX file is dominated by bookkeeping rather than weights: long exporter tensor
names repeated in every node, inferred shapes, doc strings, and all-zero zero points that
DequantizeLinear assumes anyway.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgewise.optimize.fuse import subgraphs


def _drop_zero_zero_points(m: onnx.ModelProto) -> int:
    """Remove the all-zero int32 zero points of DequantizeLinear on quantized biases (zero is the default).

    Only int32 initializers read by nothing but DequantizeLinear's third input are dropped. int8/uint8
    zero points stay: ONNX Runtime's x86 kernels rewrite s8 tensors to u8 through them, and dropping
    them was measured to change its fused results.
    """
    inits = {i.name: i for i in m.graph.initializer}
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    dropped: set[str] = set()
    for name, uses in users.items():
        if name not in inits or not all(n.op_type == "DequantizeLinear" and k == 2 for n, k in uses):
            continue
        if inits[name].data_type != onnx.TensorProto.INT32:
            continue
        if np.any(numpy_helper.to_array(inits[name])):
            continue
        # The DequantizeLinear's input must itself be a constant, or the zero point also sets the type
        if not all(n.input[0] in inits for n, _ in uses):
            continue
        for node, _ in uses:
            del node.input[2]
        dropped.add(name)
    keep = [i for i in m.graph.initializer if i.name not in dropped]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return len(dropped)


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Short internal names, no inferred shapes or doc strings, no redundant zero points.

    Graph input and output names are kept: they are the model's interface, and so is the runtime tag.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _drop_zero_zero_points(m)
    g = m.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    # Subgraphs (Loop/If/Scan) read outer tensors by name: keep every name they mention.
    keep |= {n for sub in subgraphs(g) for node in sub.node for n in [*node.input, *node.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for init in g.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    del g.value_info[:]
    m.doc_string = ""
    g.doc_string = ""
    from edgewise.profile.openvino import IR_KEY, RUNTIME_KEY

    keep_meta = [p for p in m.metadata_props if p.key in (RUNTIME_KEY, IR_KEY)]  # which runtime it is for stays
    del m.metadata_props[:]
    m.metadata_props.extend(keep_meta)
    return m
