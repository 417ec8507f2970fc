"""A NumPy executor of the IntGraph with exactly the C kernels' integer arithmetic.

The generated C must match it bit for bit; it in turn is compared with ONNX Runtime's reference (float)
execution of the QDQ model, where rounding may differ by one step.
"""

from __future__ import annotations

import numpy as np

from edgewise.codegen.graph import IntGraph, IntOp
from edgewise.codegen.quant import requantize, saturate_int8


def _windows(x: np.ndarray, a: dict[str, int], pad_value: int) -> np.ndarray:
    """(C, Ho, Wo, kh, kw) view of the padded input (taps dh, dw apart); padding holds `pad_value`."""
    c, h, w = a.get("cin", a.get("c")), a["h"], a["w"]
    dh, dw = a.get("dh", 1), a.get("dw", 1)
    span_h, span_w = (a["kh"] - 1) * dh + 1, (a["kw"] - 1) * dw + 1
    x = x.reshape(c, h, w).astype(np.int64)
    ph_end = max(0, (a["ho"] - 1) * a["sh"] + span_h - h - a["pt"])
    pw_end = max(0, (a["wo"] - 1) * a["sw"] + span_w - w - a["pl"])
    xp = np.pad(x, ((0, 0), (a["pt"], ph_end), (a["pl"], pw_end)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(1, 2))[..., ::dh, ::dw]
    return win[:, :: a["sh"], :: a["sw"]][:, : a["ho"], : a["wo"]]


def _conv(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    win = _windows(x, a, a["zin"])  # padding holds zin; the bias holds -zin * sum(w)
    groups = a["groups"]
    cg, og = a["cin"] // groups, a["cout"] // groups
    w = k["weights"][:, : a["k"]].reshape(a["cout"], cg, a["kh"], a["kw"]).astype(np.int64)
    if a["depthwise"]:
        acc = np.einsum("chwij,cij->chw", win, w[:, 0])
    else:
        acc = np.concatenate([np.einsum("dhwij,cdij->chw", win[g * cg : (g + 1) * cg], w[g * og : (g + 1) * og])
                              for g in range(groups)])
    acc = acc + k["bias"].astype(np.int64)[:, None, None]
    y = requantize(acc, k["mult"][:, None, None], k["shift"][:, None, None]) + a["zout"]
    return saturate_int8(y)


def _fc(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    acc = k["weights"].astype(np.int64) @ x.reshape(-1).astype(np.int64) + k["bias"]
    return saturate_int8(requantize(acc, k["mult"], k["shift"]) + a["zout"])


def _maxpool(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    m = _windows(x, a, -(1 << 20)).max(axis=(3, 4))
    if a["same_scale"]:
        return m.astype(np.int8)
    return saturate_int8(requantize(m - a["zin"], k["mult"][0], k["shift"][0]) + a["zout"])


def _avgpool(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    acc = (_windows(x, a, a["zin"]) - a["zin"]).sum(axis=(3, 4))
    return saturate_int8(requantize(acc, k["mult"][0], k["shift"][0]) + a["zout"])


def _clamp(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    y = requantize(x.astype(np.int64) - a["zin"], k["mult"][0], k["shift"][0]) + a["zout"]
    return saturate_int8(y, a["lo"], a["hi"])


def _add(op: IntOp, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    m, s = k["mult"], k["shift"]
    ta = requantize((xa.astype(np.int64) - a["za"]) << 20, m[0], s[0])
    tb = requantize((xb.astype(np.int64) - a["zb"]) << 20, m[1], s[1])
    return saturate_int8(requantize(ta + tb, m[2], s[2]) + a["zout"])


def _mul(op: IntOp, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    va = xa.reshape(a["c"], a["inner"]).astype(np.int64) - a["za"]
    vb = xb.reshape(a["c"], a["b_inner"]).astype(np.int64) - a["zb"]
    return saturate_int8(requantize(va * vb, k["mult"][0], k["shift"][0]) + a["zout"])


def _concat(op: IntOp, *xs: np.ndarray) -> np.ndarray:
    a, k = op.attrs, op.consts
    parts = [requantize(x.reshape(-1).astype(np.int64) - z, m, s) + a["zout"]
             for x, z, m, s in zip(xs, a["zins"], k["mult"], k["shift"])]
    return saturate_int8(np.concatenate(parts))


def _softmax(op: IntOp, x: np.ndarray) -> np.ndarray:
    a, t = op.attrs, op.consts["table"].astype(np.int64)
    v = x.reshape(a["rows"], a["k"]).astype(np.int64)
    e = t[v.max(axis=1, keepdims=True) - v]
    den = e.sum(axis=1, keepdims=True) << 16
    return saturate_int8((e * a["r"] + den // 2) // den + a["zout"])


def run_reference(graph: IntGraph, x: np.ndarray) -> np.ndarray:
    """int8 input (one sample, the input tensor's shape) -> int8 output, as the C code computes it."""
    values = {graph.input: np.asarray(x, dtype=np.int8)}
    for op in graph.ops:
        ins = [values[i] for i in op.inputs]
        if op.kind == "conv":
            y = _conv(op, ins[0])
        elif op.kind == "fc":
            y = _fc(op, ins[0])
        elif op.kind == "maxpool":
            y = _maxpool(op, ins[0])
        elif op.kind == "avgpool":
            y = _avgpool(op, ins[0])
        elif op.kind == "clamp":
            y = _clamp(op, ins[0])
        elif op.kind == "add":
            y = _add(op, ins[0], ins[1])
        elif op.kind == "mul":
            y = _mul(op, ins[0], ins[1])
        elif op.kind == "concat":
            y = _concat(op, *ins)
        elif op.kind == "lut":
            y = op.consts["table"][ins[0].astype(np.int64) + 128]
        elif op.kind == "softmax":
            y = _softmax(op, ins[0])
        else:  # reshape
            y = ins[0]
        values[op.output] = np.asarray(y, dtype=np.int8).reshape(graph.tensors[op.output].shape)
    return values[graph.output]


def quantize_input(graph: IntGraph, x: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear on the float input: round half to even, add the zero point, saturate."""
    t = graph.tensors[graph.input]
    return saturate_int8(np.rint(x / np.float32(t.scale)) + t.zero_point)
