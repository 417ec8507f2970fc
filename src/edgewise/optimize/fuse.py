"""Operator fusion: Conv+BatchNorm folding, Gemm->MatMul for weight-only passes, ORT offline optimization."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edgewise.errors import ModelError


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move tensor-valued Constant nodes into initializers (exporters such as Paddle2ONNX emit weights so)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep: list[onnx.NodeProto] = []
    for node in m.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            m.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def fold_conv_bn(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold each BatchNormalization that directly follows a Conv into the Conv's weights and bias.

    W' = W * gamma / sqrt(var + eps) per output channel;  b' = (b - mean) * gamma / sqrt(var + eps) + beta.
    Returns the new model and how many pairs were folded.
    """
    m = constants_to_initializers(model)
    inits = {i.name: i for i in m.graph.initializer}
    consumers = _consumers(m)
    graph_outputs = {o.name for o in m.graph.output}
    removed: set[int] = set()
    folded = 0
    for conv in list(m.graph.node):
        if conv.op_type != "Conv" or conv.output[0] in graph_outputs:
            continue
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization":
            continue
        bn = users[0]
        names = list(bn.input[1:5])
        if conv.input[1] not in inits or not all(n in inits for n in names) or len(bn.output) > 1:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in names)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
             if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0]))
        scale = gamma / np.sqrt(var + eps)
        w_new = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b_new = (b - mean) * scale + beta
        w_name, b_name = conv.input[1] + "_bnfold", conv.name + "_bias_bnfold"
        m.graph.initializer.append(numpy_helper.from_array(w_new.astype(np.float32), w_name))
        m.graph.initializer.append(numpy_helper.from_array(b_new.astype(np.float32), b_name))
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
        folded += 1
    keep = [n for n in m.graph.node if id(n) not in removed]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return drop_unused_initializers(m), folded


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm with a constant B (alpha=beta=1) as MatMul + Add, so MatMul-only passes reach it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = node.input[1] + "_kn"
        m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if len(node.input) > 2 and node.input[2]:
            mid = node.output[0] + "_mm"
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mid], name=node.name + "_matmul"))
            nodes.append(helper.make_node("Add", [mid, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [node.output[0]], name=node.name))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return drop_unused_initializers(m)


def subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """Every graph nested in `graph`'s nodes (Loop/Scan bodies, If branches), at any depth."""
    out = []
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out += [g, *subgraphs(g)]
    return out


def drop_unused_initializers(m: onnx.ModelProto) -> onnx.ModelProto:
    """In place (and returned): initializers no node reads go, with their graph-input entries. A Loop body or
    If branch may read the outer graph's initializers by name."""
    graphs = [m.graph, *subgraphs(m.graph)]
    used = {n for g in graphs for node in g.node for n in node.input} | {o.name for o in m.graph.output}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    graph_inputs = [v for v in m.graph.input if v.name in used or v.name not in {i.name for i in keep}]
    del m.graph.input[:]
    m.graph.input.extend(graph_inputs)
    return m


def ort_offline_optimize(model: onnx.ModelProto, level: str = "basic") -> onnx.ModelProto:
    """Run ONNX Runtime's graph optimizer once and save the result into the model.

    `basic` (constant folding, redundant-node removal, Conv+BN/Add/Mul fusion) stays portable across
    execution providers; `extended` adds CPU-specific fused kernels and ties the model to the CPU EP.
    """
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    with tempfile.TemporaryDirectory(prefix="edgewise-fuse-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX Runtime cannot optimize the model: {str(e).splitlines()[0][:300]}") from e
        return onnx.load(str(out))


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Conv+BN folding, then ORT basic offline optimization; reports node counts before and after."""
    before = len(model.graph.node)
    folded, n = fold_conv_bn(model)
    optimized = ort_offline_optimize(folded)
    return optimized, {"nodes_before": before, "nodes_after": len(optimized.graph.node), "conv_bn_folded": n}
