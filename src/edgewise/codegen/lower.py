"""Lower a QDQ int8 ONNX model (what `optimize` ships for MCU targets) to an IntGraph.

Every compute node must read Dequantize(int8 tensor) and constant weights, and feed exactly one
Quantize to int8: that is a fully int8 model. Anything else is refused with the op and node named.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgewise.codegen.graph import IntGraph, IntOp, QTensor
from edgewise.codegen.quant import quantize_multiplier, requantize, saturate_int8
from edgewise.errors import CodegenError

SUPPORTED = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
             "Squeeze", "Relu", "Clip", "Add", "Mul", "Concat", "Softmax", "Sigmoid", "HardSigmoid", "HardSwish",
             "Tanh", "LeakyRelu")


def _unary(node: onnx.NodeProto) -> Callable[[np.ndarray], np.ndarray]:
    """The float32 function of an elementwise activation, as ONNX defines it."""
    a = _attrs(node)
    one, zero = np.float32(1), np.float32(0)
    if node.op_type == "Sigmoid":
        return lambda x: one / (one + np.exp(-x))
    if node.op_type == "Tanh":
        return np.tanh
    if node.op_type == "HardSigmoid":
        alpha, beta = np.float32(a.get("alpha", 0.2)), np.float32(a.get("beta", 0.5))
        return lambda x: np.clip(alpha * x + beta, zero, one)
    if node.op_type == "HardSwish":
        return lambda x: x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), zero, one)
    alpha = np.float32(a.get("alpha", 0.01))  # LeakyRelu
    return lambda x: np.where(x >= 0, x, alpha * x)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pin_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    return m


class _Lowering:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = shape_inference.infer_shapes(_pin_batch(model))
        g = self.model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for node in g.node:
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.inits[node.output[0]] = numpy_helper.to_array(value)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for v in list(g.input) + list(g.value_info) + list(g.output):
            dims = v.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[v.name] = tuple(d.dim_value for d in dims)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.dq_of: dict[str, onnx.NodeProto] = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[IntOp] = []

    # -- helpers -------------------------------------------------------------------------------
    def _scalar(self, name: str) -> float | int:
        a = self.inits[name]
        if a.size != 1:
            raise CodegenError(f"per-channel activation quantization ({name}) is not supported")
        return a.reshape(()).item()

    def _shape(self, name: str, node: onnx.NodeProto) -> tuple[int, ...]:
        if name not in self.shapes:
            raise CodegenError(f"shape of {name!r} (node {node.name or node.op_type}) is not static; "
                               "compile needs fixed shapes")
        return self.shapes[name][1:]

    def _qtensor(self, q: onnx.NodeProto) -> QTensor:
        """The int8 tensor a QuantizeLinear node produces."""
        zp_name = q.input[2] if len(q.input) > 2 else ""
        if not zp_name or self.inits[zp_name].dtype != np.int8:
            dtype = self.inits[zp_name].dtype if zp_name else np.dtype("uint8")
            raise CodegenError(f"activations are {dtype}, not int8: re-run `edgewise optimize` for an int8-only "
                               "target such as mcu-256k")
        t = QTensor(q.output[0], self._shape(q.output[0], q), float(self._scalar(q.input[1])),
                    int(self._scalar(zp_name)))
        self.tensors[t.name] = t
        return t

    def _activation(self, name: str, node: onnx.NodeProto) -> QTensor:
        """The int8 tensor behind a node input (which must be Dequantize of a quantized tensor)."""
        dq = self.dq_of.get(name)
        if dq is None or dq.input[0] in self.inits:
            raise CodegenError(f"node {node.name or node.op_type} ({node.op_type}) reads {name!r}, which is not "
                               "an int8 tensor: the model is not fully int8 (run `edgewise optimize` for mcu-256k)")
        if dq.input[0] not in self.tensors:
            raise CodegenError(f"node {node.name or node.op_type} reads {dq.input[0]!r} before it is computed")
        return self.tensors[dq.input[0]]

    def _const(self, name: str, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(int values, scale, zero point) of a constant reached through DequantizeLinear."""
        dq = self.dq_of.get(name)
        if dq is None or dq.input[0] not in self.inits:
            raise CodegenError(f"node {node.name or node.op_type} ({node.op_type}): weight {name!r} is not a "
                               "quantized constant")
        q = self.inits[dq.input[0]]
        scale = self.inits[dq.input[1]].astype(np.float64)
        zp = self.inits[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale, dtype=np.int64)
        return q, scale, zp

    def _output(self, node: onnx.NodeProto) -> QTensor:
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            raise CodegenError(f"node {node.name or node.op_type} ({node.op_type}) does not feed a single "
                               "QuantizeLinear: its output would stay float")
        return self._qtensor(users[0])

    def _multipliers(self, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(real)]
        return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))

    # -- ops -----------------------------------------------------------------------------------
    def conv(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        x = self._activation(node.input[0], node)
        w, sw, zw = self._const(node.input[1], node)
        if np.any(zw):
            raise CodegenError(f"node {node.name}: asymmetric int8 weights are not supported")
        y = self._output(node)
        dims = len(w.shape) - 2
        if dims not in (1, 2):
            raise CodegenError(f"node {node.name}: {dims}-D convolution is not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CodegenError(f"node {node.name}: auto_pad is not supported; export with explicit pads")
        group = int(a.get("group", 1))
        cout = w.shape[0]
        cin = x.shape[0]
        if cin % group or cout % group:
            raise CodegenError(f"node {node.name}: {group} groups do not divide {cin} inputs and {cout} outputs")
        depthwise = group > 1 and group == cin and cout == cin
        kernel = list(w.shape[2:])
        strides = list(a.get("strides", [1] * dims))
        dilations = list(a.get("dilations", [1] * dims))
        pads = list(a.get("pads", [0] * 2 * dims))
        if dims == 1:  # run 1-D as 2-D with height 1
            kernel, strides, dilations = [1] + kernel, [1] + strides, [1] + dilations
            pads = [0, pads[0], 0, pads[1]]
        in_hw = (1, x.shape[1]) if dims == 1 else x.shape[1:]
        out_hw = (1, y.shape[1]) if dims == 1 else y.shape[1:]
        bias = self._bias(node, 2, x, sw, cout)
        m, s = self._multipliers(x.scale * np.broadcast_to(sw, (cout,)) / y.scale)
        w2 = w.reshape(cout, -1, kernel[0], kernel[1]).astype(np.int8)
        bias = _fold_zero_point(bias, w2, x.zero_point, node)
        op = IntOp("conv", node.name, [x.name], y.name,
                   {"cin": cin, "h": in_hw[0], "w": in_hw[1], "cout": cout, "kh": kernel[0], "kw": kernel[1],
                    "sh": strides[0], "sw": strides[1], "dh": dilations[0], "dw": dilations[1], "pt": pads[0],
                    "pl": pads[1], "ho": out_hw[0], "wo": out_hw[1], "groups": group, "depthwise": int(depthwise),
                    "zin": x.zero_point,
                    "zout": y.zero_point, "col": _pad16(int(np.prod(w2.shape[1:])))},
                   {"weights": _pad_rows(w2), "bias": bias, "mult": m, "shift": s})
        op.macs = int(np.prod(out_hw)) * cout * int(np.prod(w2.shape[1:]))
        op.attrs["k"] = int(np.prod(w2.shape[1:]))
        self.ops.append(op)

    def _bias(self, node: onnx.NodeProto, idx: int, x: QTensor, sw: np.ndarray, n: int) -> np.ndarray:
        """Bias in the accumulator's scale (x.scale * w.scale): re-expressed exactly if ORT chose another."""
        if len(node.input) <= idx or not node.input[idx]:
            return np.zeros(n, dtype=np.int32)
        b, sb, zb = self._const(node.input[idx], node)
        real = (b.astype(np.float64) - zb) * sb
        acc_scale = x.scale * np.broadcast_to(sw, (n,))
        return np.round(real / acc_scale).astype(np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)

    def fc(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        if node.op_type == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            raise CodegenError(f"node {node.name}: Gemm with transA/alpha/beta is not supported")
        x = self._activation(node.input[0], node)
        w, sw, zw = self._const(node.input[1], node)
        if np.any(zw):
            raise CodegenError(f"node {node.name}: asymmetric int8 weights are not supported")
        y = self._output(node)
        if node.op_type == "MatMul" or not a.get("transB", 0):
            w = w.T  # (in, out) -> (out, in); per-column scales become per-output scales
        n, k = w.shape
        if x.size != k:
            raise CodegenError(f"node {node.name}: input has {x.size} values, weights expect {k}")
        bias = self._bias(node, 2, x, sw, n) if node.op_type == "Gemm" else np.zeros(n, dtype=np.int32)
        m, s = self._multipliers(x.scale * np.broadcast_to(sw, (n,)) / y.scale)
        bias = _fold_zero_point(bias, w, x.zero_point, node)
        op = IntOp("fc", node.name, [x.name], y.name, {"k": k, "n": n, "zin": x.zero_point, "zout": y.zero_point},
                   {"weights": np.ascontiguousarray(w.astype(np.int8)), "bias": bias, "mult": m, "shift": s})
        op.macs = n * k
        self.ops.append(op)

    def pool(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        x = self._activation(node.input[0], node)
        y = self._output(node)
        glob = node.op_type == "GlobalAveragePool"
        dims = len(x.shape) - 1
        kernel = list(x.shape[1:]) if glob else list(a["kernel_shape"])
        strides = [1] * dims if glob else list(a.get("strides", [1] * dims))
        pads = [0] * 2 * dims if glob else list(a.get("pads", [0] * 2 * dims))
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1] * dims)):
            raise CodegenError(f"node {node.name}: {node.op_type} with ceil_mode or dilations is not supported")
        if dims == 1:
            kernel, strides, pads = [1] + kernel, [1] + strides, [0, pads[0], 0, pads[1]]
        in_hw = (1, x.shape[1]) if dims == 1 else x.shape[1:]
        out_hw = (1, y.shape[1]) if dims == 1 else y.shape[1:]
        attrs = {"c": x.shape[0], "h": in_hw[0], "w": in_hw[1], "kh": kernel[0], "kw": kernel[1], "sh": strides[0],
                 "sw": strides[1], "pt": pads[0], "pl": pads[1], "ho": out_hw[0], "wo": out_hw[1],
                 "zin": x.zero_point, "zout": y.zero_point}
        if node.op_type == "MaxPool":
            m, s = self._multipliers(np.array([x.scale / y.scale]))
            attrs["same_scale"] = int(abs(x.scale - y.scale) <= 1e-12 * x.scale and x.zero_point == y.zero_point)
            self.ops.append(IntOp("maxpool", node.name, [x.name], y.name, attrs, {"mult": m, "shift": s}))
            return
        if any(pads) and not a.get("count_include_pad", 0):
            raise CodegenError(f"node {node.name}: padded AveragePool without count_include_pad is not supported")
        window = kernel[0] * kernel[1]
        m, s = self._multipliers(np.array([x.scale / (y.scale * window)]))
        self.ops.append(IntOp("avgpool", node.name, [x.name], y.name, attrs, {"mult": m, "shift": s}))

    def reshape(self, node: onnx.NodeProto) -> None:
        x = self._activation(node.input[0], node)
        y = self._output(node)
        if x.size != y.size:
            raise CodegenError(f"node {node.name}: reshape changes the element count")
        if abs(x.scale - y.scale) > 1e-12 * x.scale or x.zero_point != y.zero_point:
            raise CodegenError(f"node {node.name}: {node.op_type} requantizes; not supported")
        self.ops.append(IntOp("reshape", node.name, [x.name], y.name, {"n": x.size}))

    def clamp(self, node: onnx.NodeProto) -> None:
        x = self._activation(node.input[0], node)
        y = self._output(node)
        lo_f, hi_f = 0.0, float("inf")
        if node.op_type == "Clip":
            lo_f = float(self.inits[node.input[1]]) if len(node.input) > 1 and node.input[1] else float("-inf")
            hi_f = float(self.inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else float("inf")
        lo = -128 if lo_f == float("-inf") else int(np.clip(np.round(lo_f / y.scale) + y.zero_point, -128, 127))
        hi = 127 if hi_f == float("inf") else int(np.clip(np.round(hi_f / y.scale) + y.zero_point, -128, 127))
        m, s = self._multipliers(np.array([x.scale / y.scale]))
        self.ops.append(IntOp("clamp", node.name, [x.name], y.name,
                              {"n": x.size, "zin": x.zero_point, "zout": y.zero_point, "lo": lo, "hi": hi},
                              {"mult": m, "shift": s}))

    def add(self, node: onnx.NodeProto) -> None:
        a_t = self._activation(node.input[0], node)
        b_t = self._activation(node.input[1], node)
        y = self._output(node)
        if a_t.shape != b_t.shape:
            raise CodegenError(f"node {node.name}: broadcasting Add is not supported")
        # Both inputs are brought to a common scale twice the larger input scale, with 20 bits of headroom
        # (the TFLite scheme), added, then requantized to the output scale.
        twice = 2 * max(a_t.scale, b_t.scale)
        ma, sa = self._multipliers(np.array([a_t.scale / twice]))
        mb, sb = self._multipliers(np.array([b_t.scale / twice]))
        mo, so = self._multipliers(np.array([twice / ((1 << 20) * y.scale)]))
        self.ops.append(IntOp("add", node.name, [a_t.name, b_t.name], y.name,
                              {"n": a_t.size, "za": a_t.zero_point, "zb": b_t.zero_point, "zout": y.zero_point},
                              {"mult": np.concatenate([ma, mb, mo]), "shift": np.concatenate([sa, sb, so])}))

    def lut(self, node: onnx.NodeProto) -> None:
        """An elementwise activation on int8 has 256 possible inputs: it becomes a table, computed here as
        ONNX Runtime computes the QDQ graph (dequantize, the function in float32, quantize)."""
        x = self._activation(node.input[0], node)
        y = self._output(node)
        q = np.arange(-128, 128, dtype=np.int32)
        xf = (q - x.zero_point).astype(np.float32) * np.float32(x.scale)
        with np.errstate(over="ignore"):
            yf = _unary(node)(xf).astype(np.float32)
        table = np.clip(np.rint(yf / np.float32(y.scale)) + y.zero_point, -128, 127).astype(np.int8)
        self.ops.append(IntOp("lut", node.name, [x.name], y.name, {"n": x.size}, {"table": table}))

    def mul(self, node: onnx.NodeProto) -> None:
        a_t = self._activation(node.input[0], node)
        b_t = self._activation(node.input[1], node)
        y = self._output(node)
        if b_t.size > a_t.size:
            a_t, b_t = b_t, a_t
        if b_t.size == a_t.size and b_t.shape == a_t.shape:
            c, inner, b_inner = 1, a_t.size, a_t.size
        elif b_t.size == 1:
            c, inner, b_inner = 1, a_t.size, 1
        elif b_t.size == a_t.shape[0] and all(d == 1 for d in b_t.shape[1:]) and len(b_t.shape) == len(a_t.shape):
            c, inner, b_inner = a_t.shape[0], a_t.size // a_t.shape[0], 1  # per channel (squeeze-excite)
        else:
            raise CodegenError(f"node {node.name}: Mul broadcasting {b_t.shape} onto {a_t.shape} is not supported "
                               "(same shape, one value, or one per channel)")
        m, s = self._multipliers(np.array([a_t.scale * b_t.scale / y.scale]))
        fused = self._fuse_gate(node, a_t, b_t, y, m, s)
        if fused is not None:
            self.ops.append(fused)
            return
        self.ops.append(IntOp("mul", node.name, [a_t.name, b_t.name], y.name,
                              {"c": c, "inner": inner, "b_inner": b_inner, "za": a_t.zero_point,
                               "zb": b_t.zero_point, "zout": y.zero_point}, {"mult": m, "shift": s}))

    def _fuse_gate(self, node: onnx.NodeProto, a_t: QTensor, b_t: QTensor, y: QTensor, m: np.ndarray,
                   s: np.ndarray) -> IntOp | None:
        """x * f(x), with f a table op read only here (HardSwish as the quantizer leaves it: x * HardSigmoid(x);
        also SiLU): a function of x alone, so one table computed with the Mul's own integer arithmetic, which
        keeps the result bit-exact and drops a full-size pass and its per-element requantization."""
        for x_t, g_t in ((a_t, b_t), (b_t, a_t)):
            gate = next((op for op in self.ops if op.kind == "lut" and op.output == g_t.name), None)
            if gate is None or gate.inputs[0] != x_t.name or g_t.shape != x_t.shape:
                continue
            readers = [n for dq in self.consumers.get(g_t.name, []) for n in self.consumers.get(dq.output[0], [])]
            if len(readers) != 1 or readers[0] is not node:
                continue
            q = np.arange(-128, 128, dtype=np.int64)
            t = gate.consts["table"].astype(np.int64)
            acc = (q - x_t.zero_point) * (t - g_t.zero_point)
            table = saturate_int8(requantize(acc, int(m[0]), int(s[0])) + y.zero_point)
            self.ops.remove(gate)
            return IntOp("lut", f"{gate.node}+{node.name}", [x_t.name], y.name, {"n": x_t.size}, {"table": table})
        return None

    def concat(self, node: onnx.NodeProto) -> None:
        ins = [self._activation(name, node) for name in node.input]
        y = self._output(node)
        axis = int(_attrs(node).get("axis", 1))
        rank = len(y.shape) + 1  # with the batch dimension
        if axis < 0:
            axis += rank
        if axis != 1:
            raise CodegenError(f"node {node.name}: Concat on axis {axis} is not supported (channels only)")
        m, s = self._multipliers(np.array([t.scale / y.scale for t in ins]))
        self.ops.append(IntOp("concat", node.name, [t.name for t in ins], y.name,
                              {"zout": y.zero_point, "sizes": [t.size for t in ins], "zins": [t.zero_point for t in ins]},
                              {"mult": m, "shift": s}))

    def softmax(self, node: onnx.NodeProto) -> None:
        """exp(x - max) from a table of 2^20 exp(-d * scale) for the 256 possible differences d; each
        output round(t / (sum * y.scale)) + zero point in 64-bit integers."""
        x = self._activation(node.input[0], node)
        y = self._output(node)
        axis = int(_attrs(node).get("axis", -1))
        if axis not in (-1, len(x.shape)):
            raise CodegenError(f"node {node.name}: Softmax over axis {axis} is not supported (the last only)")
        k = x.shape[-1]
        table = np.round(np.exp(-np.arange(256) * x.scale) * (1 << 20)).astype(np.int32)
        r = round((1 << 16) / y.scale)
        if r >= 2**31 or k > 2048:
            raise CodegenError(f"node {node.name}: Softmax output scale {y.scale} or width {k} is out of range")
        self.ops.append(IntOp("softmax", node.name, [x.name], y.name,
                              {"rows": x.size // k, "k": k, "r": int(r), "zout": y.zero_point}, {"table": table}))

    def run(self) -> IntGraph:
        g = self.model.graph
        inits = set(self.inits)
        graph_inputs = [v for v in g.input if v.name not in inits]
        if len(graph_inputs) != 1 or len(g.output) != 1:
            raise CodegenError("compile supports models with one input and one output")
        in_name = graph_inputs[0].name
        q_in = [n for n in self.consumers.get(in_name, []) if n.op_type == "QuantizeLinear"]
        if len(q_in) != 1 or len(self.consumers[in_name]) != 1:
            raise CodegenError("the model input is not quantized to int8 first: this is not an int8 model; run "
                               "`edgewise optimize` for an int8-only target such as mcu-256k")
        first = self._qtensor(q_in[0])
        handlers = {"Conv": self.conv, "Gemm": self.fc, "MatMul": self.fc, "MaxPool": self.pool,
                    "AveragePool": self.pool, "GlobalAveragePool": self.pool, "Flatten": self.reshape,
                    "Reshape": self.reshape, "Squeeze": self.reshape, "Relu": self.clamp, "Clip": self.clamp,
                    "Add": self.add, "Mul": self.mul, "Concat": self.concat, "Softmax": self.softmax,
                    **{op: self.lut for op in ("Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu")}}
        for node in g.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
                continue
            handler = handlers.get(node.op_type)
            if handler is None:
                raise CodegenError(f"unsupported op {node.op_type} at node {node.name or '?'}: the C backend "
                                   f"supports {', '.join(SUPPORTED)}")
            handler(node)
        out_dq = self.dq_of.get(g.output[0].name)
        if out_dq is None or out_dq.input[0] not in self.tensors:
            raise CodegenError("the model output is not an int8 tensor dequantized at the end")
        return IntGraph(first.name, out_dq.input[0], self.tensors, self.ops, in_name, g.output[0].name)


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def _pad_rows(w: np.ndarray) -> np.ndarray:
    """(cout, ...) weights as (cout, k padded to 16) rows of zeros after the real taps."""
    rows = w.reshape(len(w), -1)
    out = np.zeros((len(w), _pad16(rows.shape[1])), dtype=np.int8)
    out[:, : rows.shape[1]] = rows
    return out


def _fold_zero_point(bias: np.ndarray, w: np.ndarray, zin: int, node: onnx.NodeProto) -> np.ndarray:
    """bias - zin * sum(w) per output: sum((x - zin) * w) + b == sum(x * w) + folded. Must fit int32."""
    folded = bias.astype(np.int64) - zin * w.reshape(len(w), -1).astype(np.int64).sum(axis=1)
    if np.abs(folded).max(initial=0) >= 2**31:
        raise CodegenError(f"node {node.name}: bias overflows int32 after folding the input zero point")
    return folded.astype(np.int32)


def lower(model: onnx.ModelProto) -> IntGraph:
    """QDQ int8 ONNX -> IntGraph, or a CodegenError naming what stands in the way."""
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise CodegenError("the model is not int8 (no QuantizeLinear): run `edgewise optimize` for an int8-only "
                           "target such as mcu-256k first")
    return _Lowering(model).run()
