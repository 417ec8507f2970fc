"""Which layers int8 hurts: per-layer sensitivity, automatic exclusions, and the mixed-precision search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from edgewise.optimize.quantize import COMPUTE_OPS, Quantizer, StaticConfig

# Ops that only reshape or normalise a head's output; a compute node reached through them is "output-adjacent".
_PASSTHROUGH = {"Softmax", "LogSoftmax", "Sigmoid", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                "Identity", "Cast", "Concat", "Add", "Mul", "Div", "Sub", "ArgMax", "TopK", "Resize", "Slice"}
# Ratio of a tensor's full (min..max) range to its 99.99th-percentile range above which outliers would
# eat int8 resolution.
HIGH_RANGE_RATIO = 4.0


def relative_error(out: np.ndarray | list[np.ndarray], ref: np.ndarray | list[np.ndarray]) -> float:
    """||out - ref|| / ||ref|| over the whole evaluation set: continuous, works for any output (the worst
    of several outputs)."""
    if isinstance(out, list):
        return max(relative_error(o, r) for o, r in zip(out, ref))
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))


def quantizable_nodes(model: onnx.ModelProto, ops: tuple[str, ...] | None = COMPUTE_OPS) -> list[str]:
    wanted = set(ops or COMPUTE_OPS)
    return [n.name for n in model.graph.node if n.op_type in wanted]


def layer_sensitivity(quantizer: Quantizer, cfg: StaticConfig, run: Callable[[onnx.ModelProto], Any],
                      reference: Any, nodes: list[str], stop: Callable[[], bool] = lambda: False,
                      progress: Callable[[int, int], None] = lambda _d, _t: None) -> dict[str, float]:
    """Quantize one layer at a time (everything else float) and measure the output's relative error;
    `stop()` ends it early (a time budget), keeping the layers measured so far."""
    scores: dict[str, float] = {}
    for i, name in enumerate(nodes):
        progress(i, len(nodes))
        if stop():
            break
        model = quantizer.static(replace(cfg, only=(name,), exclude=()))
        scores[name] = relative_error(run(model), reference)
    progress(len(nodes), len(nodes))
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def output_tail(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes between the last compute layers and the graph outputs, those layers included: a detector's
    decode (box arithmetic on pixel coordinates, sigmoid scores, concat), a classifier's last Gemm and
    softmax. Found by walking back from every output through ops that only reshape, normalise or combine
    what those layers computed."""
    producers = {o: n for n in model.graph.node for o in n.output}
    tail: list[onnx.NodeProto] = []
    seen: set[int] = set()  # by identity: exporters may leave node names empty
    frontier = [o.name for o in model.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        tail.append(node)
        if node.op_type not in COMPUTE_OPS and node.op_type in _PASSTHROUGH:
            frontier.extend(node.input)
    return tail


def auto_exclusions(model: onnx.ModelProto, minmax: dict[str, tuple[float, float]],
                    percentile: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Nodes that are better kept in float, each with the reason, found without the user's help.

    - output-adjacent: the last compute layers before a graph output (through softmax/reshape/concat ...),
      where detector heads and post-processing lose most to int8;
    - high-range: layers whose input's full range is far wider than its 99.99th percentile.
    """
    reasons = {n.name: "output-adjacent: feeds the model output"
               for n in output_tail(model) if n.op_type in COMPUTE_OPS and n.name}
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or node.name in reasons:
            continue
        src = node.input[0]
        if src in minmax and src in percentile:
            full = minmax[src][1] - minmax[src][0]
            core = percentile[src][1] - percentile[src][0]
            if core > 0 and full / core > HIGH_RANGE_RATIO:
                reasons[node.name] = f"high-range input: full range {full / core:.1f}x its 99.99th percentile"
    return reasons


def mixed_precision(quantizer: Quantizer, cfg: StaticConfig, sensitivity: dict[str, float],
                    acceptable: Callable[[onnx.ModelProto], bool],
                    max_float: int | None = None) -> tuple[onnx.ModelProto, tuple[str, ...]] | None:
    """Keep the most sensitive layers in float, growing the set 1, 2, 4, ... until `acceptable` holds.

    Returns the first acceptable model and the layers it keeps in float, or None if even keeping
    `max_float` layers in float is not enough.
    """
    ranked = list(sensitivity)
    limit = min(len(ranked) - 1, max_float if max_float is not None else len(ranked) - 1)
    k = 1
    while k <= limit:
        keep = tuple(ranked[:k])
        model = quantizer.static(replace(cfg, exclude=tuple(sorted(set(cfg.exclude) | set(keep)))))
        if acceptable(model):
            return model, keep
        if k == limit:
            break
        k = min(k * 2, limit)
    return None
