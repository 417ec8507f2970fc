"""Structured channel pruning on an ONNX graph: for models that come without their torch module.

A convolution's output channels can go when everything that reads them either passes each channel on by
itself (activations, x*sigmoid(x), depthwise convolutions, batch norm, global pooling) or consumes channels
as its input (a dense convolution, or a fully connected layer after global pooling). Such a producer and its
readers form a *group*: dropping channel c removes filter c from the producer, channel c from every
pass-through, and input column c from every consumer. Channels that meet a residual Add, a Concat, a Split,
a Reshape or a graph output are tied to other tensors, so their group is left whole: correct on any graph,
if less than a dependency-graph pruner with a torch module could do.

The least important channels go first (the L1 norm of the producer's filter, batch norm folded in as
exporters do), and each group keeps a multiple of `multiple` channels so the int8 kernels stay on their
fast paths. The graph's structure is unchanged; only weights shrink. Fine-tuning is `graph_finetune`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgewise.errors import OptimizeError
from edgewise.optimize.fuse import drop_unused_initializers, subgraphs

# Ops that map channel c of their input to channel c of their output, and nothing else.
# (Their other inputs, Clip's bounds, are scalars by the ONNX spec.)
ELEMENTWISE = {"Relu", "Sigmoid", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Identity", "Elu",
               "Selu", "Softplus", "Gelu", "Mish", "Dropout", "MaxPool", "AveragePool"}
ARITHMETIC = {"Mul", "Add", "Sub", "Div"}


@dataclass
class Group:
    producer: onnx.NodeProto
    channels: int
    passes: list[onnx.NodeProto] = field(default_factory=list)  # depthwise convs, batch norms
    consumers: list[onnx.NodeProto] = field(default_factory=list)  # dense convs, Gemm (after pooling)
    excites: list[onnx.NodeProto] = field(default_factory=list)  # convs whose outputs scale the channels


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.g = model.graph
        self.weights = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        self.maker: dict[str, onnx.NodeProto] = {}
        for n in self.g.node:
            for t in n.input:
                self.readers.setdefault(t, []).append(n)
            for t in n.output:
                self.maker[t] = n
        self.outputs = {o.name for o in self.g.output}

    def weight(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        return self.weights.get(node.input[i]) if len(node.input) > i and node.input[i] else None

    def group(self, conv: onnx.NodeProto) -> Group | None:
        """conv's group, or None when its channels are tied to something outside it."""
        w = self.weight(conv, 1)
        if w is None or _attr(conv, "group", 1) != 1 or len(w) < 2:
            return None
        grp = Group(conv, len(w))
        inside, todo, pooled = {conv.output[0]}, [conv.output[0]], set()
        while todo:
            t = todo.pop()
            if t in self.outputs:
                return None
            for r in self.readers.get(t, []):
                outs = [o for o in r.output if o]
                if r.op_type == "Conv" and r.input[0] == t and self.weight(r, 1) is not None:
                    rw = self.weight(r, 1)
                    groups = _attr(r, "group", 1)
                    if groups == 1:
                        grp.consumers.append(r)
                        continue
                    if groups == rw.shape[0] == grp.channels and rw.shape[1] == 1:  # depthwise
                        grp.passes.append(r)
                    else:
                        return None
                elif r.op_type == "BatchNormalization" and r.input[0] == t and all(
                        i in self.weights for i in r.input[1:5]):
                    grp.passes.append(r)
                    outs = outs[:1]
                elif r.op_type in ELEMENTWISE and r.input[0] == t:
                    pass
                elif r.op_type in ARITHMETIC and any(self._scalar(i) for i in r.input):
                    pass  # x * 0.5, x + 3: the same for every channel
                elif r.op_type == "Mul" and all(i in inside or self._follows(i, inside) for i in r.input):
                    inside.update(r.input)  # x * f(x): SiLU, Swish
                elif r.op_type == "Mul" and (excite := self._excite(r, t, grp.channels)) is not None:
                    grp.excites.append(excite)  # x * s(x), s a squeeze-and-excitation branch's per-channel scale
                elif self._pools(r, t, pooled):
                    pooled.add(outs[0])
                elif r.op_type == "Gemm" and t in pooled and r.input[0] == t and self.weight(r, 1) is not None:
                    grp.consumers.append(r)
                    continue
                else:
                    return None
                for o in outs:
                    if o not in inside:
                        inside.add(o)
                        todo.append(o)
        return grp if grp.consumers else None

    @staticmethod
    def _pools(r: onnx.NodeProto, t: str, pooled: set[str]) -> bool:
        """r pools t over space, keeping one value per channel (or flattens what was pooled)."""
        if r.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            return t not in pooled
        if r.op_type in ("ReduceMean", "ReduceMax"):  # x.mean((2, 3)), axes as an attribute (opset < 18)
            axes = _attr(r, "axes", [0])
            return len(r.input) == 1 and t not in pooled and all(int(a) >= 2 for a in axes)  # type: ignore[union-attr]
        return r.op_type == "Flatten" and t in pooled and _attr(r, "axis", 1) == 1

    def _scalar(self, t: str) -> bool:
        if t in self.weights:
            return self.weights[t].size == 1
        m = self.maker.get(t)
        if m is None or m.op_type != "Constant" or not m.attribute:
            return False
        return helper.get_attribute_value(m.attribute[0]) is not None and np.size(
            numpy_helper.to_array(m.attribute[0].t) if m.attribute[0].name == "value" else 0) == 1

    def _excite(self, mul: onnx.NodeProto, t: str, channels: int) -> onnx.NodeProto | None:
        """The convolution at the end of a squeeze-and-excitation branch that `mul` scales t by: its output
        channels are this group's, through elementwise ops (HardSigmoid, Sigmoid) read by nothing else."""
        if len(mul.input) != 2 or t not in mul.input:
            return None
        other = mul.input[1] if mul.input[0] == t else mul.input[0]
        for _ in range(8):
            m = self.maker.get(other)
            if m is None or len(self.readers.get(other, [])) != 1:
                return None
            if m.op_type == "Conv":
                w = self.weight(m, 1)
                ok = w is not None and _attr(m, "group", 1) == 1 and len(w) == channels
                return m if ok else None
            if not (m.op_type in ELEMENTWISE or (m.op_type in ARITHMETIC and any(self._scalar(i) for i in m.input))):
                return None
            other = next(i for i in m.input if not self._scalar(i))
        return None

    def _follows(self, t: str, inside: set[str]) -> bool:
        """t is an elementwise function of a tensor inside the group: the sigmoid in x * sigmoid(x), or
        clip(x + 3, 0, 6) / 6 in a hard-swish written out."""
        for _ in range(8):
            m = self.maker.get(t)
            if m is None:
                return False
            if m.op_type in ELEMENTWISE:
                t = m.input[0]
            elif m.op_type in ARITHMETIC and len(m.input) == 2 and any(self._scalar(i) for i in m.input):
                t = m.input[1] if self._scalar(m.input[0]) else m.input[0]
            else:
                return False
            if t in inside:
                return True
        return False


def _own_weights(model: onnx.ModelProto) -> None:
    """Give every Conv/BatchNormalization/Gemm its own initializers: exporters share equal tensors (two zero
    biases) and route some through Identity nodes; pruning one user must not reshape another's. Constant
    nodes become initializers."""
    g = model.graph
    constants = [n for n in g.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name == "value"]  # Paddle's exporter keeps every weight in one
    for n in constants:
        t = onnx.TensorProto()
        t.CopyFrom(n.attribute[0].t)
        t.name = n.output[0]
        g.initializer.append(t)
    if constants:
        gone = {id(n) for n in constants}
        keep = [n for n in g.node if id(n) not in gone]
        del g.node[:]
        g.node.extend(keep)
    names = {i.name for i in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in names}
    arrays = {i.name: i for i in g.initializer}
    taken: set[str] = set()
    fresh: list[onnx.TensorProto] = []
    for k, n in enumerate(g.node):
        if n.op_type not in ("Conv", "BatchNormalization", "Gemm"):
            continue
        for j in range(1, len(n.input)):
            src = alias.get(n.input[j], n.input[j])
            if src not in arrays:
                continue
            if src in taken or src != n.input[j]:
                new = f"{src}.ew{k}.{j}"
                t = onnx.TensorProto()
                t.CopyFrom(arrays[src])
                t.name = new
                fresh.append(t)
                n.input[j] = new
            else:
                n.input[j] = src
            taken.add(n.input[j])
    g.initializer.extend(fresh)
    used = {t for sub in [g, *subgraphs(g)] for n in sub.node for t in n.input} | {o.name for o in g.output}
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(model)


def _groups(gr: _Graph) -> list[Group]:
    return [grp for n in gr.g.node if n.op_type == "Conv" for grp in [gr.group(n)] if grp is not None]


def groups(model: onnx.ModelProto) -> list[Group]:
    """The prunable groups of a model whose weights are initializers (call on a normalized copy)."""
    return _groups(_Graph(model))


def _normalized(model: onnx.ModelProto) -> tuple[onnx.ModelProto, _Graph, list[Group]]:
    """A copy with its own weights per layer (`_own_weights`), its graph, and its prunable groups."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _own_weights(m)
    gr = _Graph(m)
    return m, gr, _groups(gr)


def prunable(model: onnx.ModelProto) -> bool:
    """Whether `prune_channels` finds anything to remove in `model`."""
    return bool(_normalized(model)[2])


def _kept(score: np.ndarray, ratio: float, multiple: int) -> np.ndarray:
    n = len(score)
    k = int(np.ceil(n * ratio / multiple) * multiple) if n > multiple else n
    k = min(n, max(1, k))
    return np.sort(np.argsort(-score, kind="stable")[:k])


def prune_channels(model: onnx.ModelProto, keep_ratio: float, multiple: int = 8) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` with (1 - keep_ratio) of each group's channels removed (rounded up to `multiple`).
    Returns the model and what was done: groups, channels before/after."""
    if not 0.0 < keep_ratio < 1.0:
        raise OptimizeError(f"keep ratio must be between 0 and 1, got {keep_ratio}")
    m, gr, found = _normalized(model)
    if not found:
        raise OptimizeError("no convolution's channels can be removed without touching a residual, concat or "
                            "output: nothing to prune in this graph")
    w = gr.weights
    plan = []
    for grp in found:
        filt = w[grp.producer.input[1]]
        plan.append((grp, _kept(np.abs(filt).reshape(len(filt), -1).sum(1), keep_ratio, multiple)))
    before = after = 0
    for grp, idx in plan:
        before, after = before + grp.channels, after + len(idx)
        for node in (grp.producer, *grp.excites):  # their output channels: weights and bias
            for j in (1, 2):
                if len(node.input) > j and node.input[j] in w:
                    w[node.input[j]] = w[node.input[j]][idx]
        for node in grp.passes:
            for j in range(1, len(node.input)):
                if node.input[j] in w and w[node.input[j]].ndim >= 1 and len(w[node.input[j]]) == grp.channels:
                    w[node.input[j]] = w[node.input[j]][idx]
            if node.op_type == "Conv":
                for a in node.attribute:
                    if a.name == "group":
                        a.i = len(idx)
        for node in grp.consumers:
            cw = w[node.input[1]]
            if node.op_type == "Gemm":
                w[node.input[1]] = cw[:, idx] if _attr(node, "transB", 0) else cw[idx]
            else:
                w[node.input[1]] = cw[:, idx]
    for init in m.graph.initializer:
        if init.name in w and tuple(init.dims) != w[init.name].shape:
            init.CopyFrom(numpy_helper.from_array(w[init.name].astype(numpy_helper.to_array(init).dtype),
                                                  init.name))
    del m.graph.value_info[:]  # intermediate shapes changed; runtimes infer them again
    onnx.checker.check_model(m)
    return m, {"kind": "graph-channel", "keep_ratio": keep_ratio, "multiple": multiple, "groups": len(plan),
               "channels_before": before, "channels_after": after}
