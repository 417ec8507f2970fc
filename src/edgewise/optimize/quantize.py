"""Quantization passes on top of onnxruntime.quantization: static QDQ int8, dynamic int8, int4 weight-only.

What we add is bookkeeping: calibration runs once per method (ORT's calibration cache) and is reused by
every candidate, calibration batches are streamed and bounded, and every result is a plain ModelProto.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization import calibrate as _calibrate
from onnxruntime.quantization.quant_utils import smooth_distribution

from edgewise.data import Dataset
from edgewise.errors import OptimizeError
from edgewise.fsutil import scratch_cwd
from edgewise.modelio import LARGE_MODEL_BYTES, save_model, upgrade_opset
from edgewise.optimize.fuse import fold_conv_bn, gemm_to_matmul
from edgewise.profile.feeds import Feeder, InputSpec, model_inputs

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")

logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)


def _f32(v: object) -> object:
    return v.astype(np.float32) if isinstance(v, np.ndarray | np.floating) and v.dtype == np.float64 else v


class _WideHistograms(_calibrate.HistogramCollector):  # type: ignore[misc]
    """ORT's Percentile histograms (of |x|), with bin edges kept in float64.

    ORT bins each tensor in its own float32: one tensor whose values span a range too narrow for 2048
    distinct float32 bin edges (a grid of anchor centres in a detector head, say) fails the whole
    calibration with "Too many bins for data range". The same histogram with float64 edges does not;
    the thresholds go back to ORT in float32, as it expects.
    """

    def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
        for tensor, arrs in name_to_arr.items():
            parts = arrs if isinstance(arrs, list) else [arrs]
            data = np.concatenate([np.asarray(a).ravel() for a in parts])
            if data.size:
                low, high = np.nanmin(data), np.nanmax(data)
            else:
                low = high = np.array(0, dtype=data.dtype)
            mag = np.abs(data).astype(np.float64)
            if tensor not in self.histogram_dict:
                hist, edges = np.histogram(mag, bins=self.num_bins)
            else:
                old_hist, edges, old_low, old_high = self.histogram_dict[tensor]
                top = np.nanmax(mag) if mag.size else 0.0
                if top > edges[-1]:  # widen with bins of the same width
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
                hist, edges = np.histogram(mag, bins=edges)
                hist[: len(old_hist)] += old_hist
                low, high = min(old_low, low), max(old_high, high)
            self.histogram_dict[tensor] = (hist, edges, low, high)

    def compute_collection_result(self) -> dict[str, Any]:
        return {k: tuple(_f32(x) for x in v) if isinstance(v, tuple) else _f32(v)
                for k, v in super().compute_collection_result().items()}

    def get_entropy_threshold(self, histogram: tuple, num_quantized_bins: int) -> tuple[Any, Any]:
        return entropy_threshold(histogram, num_quantized_bins)


MAX_ENTROPY_CANDIDATES = 4096


def _candidates(first: int, last: int, limit: int) -> np.ndarray:
    """Half-widths (in bins) of the thresholds to try: every one from `first` to `last` when there are at
    most `limit`, as ORT tries them; else `limit` of them spaced geometrically, so every bin near zero is
    still tried and wide thresholds are 0.15% apart (for 64 to 25,000 bins) instead of one bin apart."""
    if last - first + 1 <= limit:
        return np.arange(first, last + 1)
    return np.unique(np.round(np.geomspace(first, last, limit)).astype(np.int64))


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[Any, Any]:
    """ORT's KL-divergence threshold search (`HistogramCollector.get_entropy_threshold`), same results, in
    numpy instead of Python loops. ORT's collector widens a tensor's histogram with bins of the same width
    whenever a later batch reaches further, so a tensor whose range grows ends with tens of thousands of bins,
    and ORT's search, quadratic in them and looping in Python, took 70 s for YOLOv8n at 16 samples (1.3 s
    for MinMax). Beyond MAX_ENTROPY_CANDIDATES thresholds, a geometric subset of them is tried
    (`_candidates`), on the histogram at its full resolution, which bounds the cost."""
    hist, edges = np.asarray(histogram[0]), np.asarray(histogram[1])
    n, q_bins = hist.size, num_quantized_bins
    zero, half_q = n // 2, q_bins // 2
    outside = np.concatenate([[0], np.cumsum(hist)])
    tried = _candidates(half_q, zero, MAX_ENTROPY_CANDIDATES)
    kl = np.zeros(len(tried))
    thresholds = []
    for k, i in enumerate(tried):
        start, end = zero - i, min(zero + i + 1, n)
        thresholds.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += outside[start]
        p[-1] += outside[n] - outside[end]
        size, merged = end - start, (end - start) // q_bins
        quantized = sliced[:q_bins * merged].reshape(q_bins, merged).sum(1)
        quantized[-1] += sliced[q_bins * merged:].sum()
        norm = (p[:q_bins * merged] != 0).reshape(q_bins, merged).sum(1)
        per_bin = np.zeros(q_bins, dtype=np.int64)  # ORT stores q in int64: the quotient is truncated
        np.divide(quantized, norm, out=per_bin, where=norm != 0, casting="unsafe")
        q = np.zeros(size, dtype=np.int64)
        q[:q_bins * merged] = np.repeat(per_bin, merged)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        kl[k] = np.inf if ps is None or qs is None else _calibrate.entropy(ps, qs)
    low, high = thresholds[int(np.argmin(kl))]
    low = histogram[2] if low < histogram[2] else low
    high = histogram[3] if high > histogram[3] else high
    return np.asarray(low, dtype=edges.dtype), np.asarray(high, dtype=edges.dtype)


# HistogramCalibrater looks the collector up in its module when it first collects.
_calibrate.HistogramCollector = _WideHistograms


class StreamingReader(CalibrationDataReader):
    """Feeds at most `max_samples` samples in equal batches (ORT's histogram calibrators stack the batches
    they see, so a short last batch would break them).

    ORT's calibrators keep every intermediate tensor of every batch they are given until they summarise
    them (24 GB for a text recognizer at 256 samples): `set_range` lets quantize_static hand them one
    batch at a time ("CalibStridedMinMax"), so memory stays at one batch of activations.

    `data` is one input's array (the name given) or a Dataset; named (multi-input) data feeds one complete
    sample at a time, as the model takes it.
    """

    def __init__(self, input_name: str | list[InputSpec], x: np.ndarray | Dataset, batch: int = 8,
                 max_samples: int = 256) -> None:
        if isinstance(input_name, str):
            arr = np.asarray(x)
            specs = [InputSpec(input_name, arr.dtype, (None, *arr.shape[1:]))]
        else:
            specs = input_name
        data = x.head(max_samples) if isinstance(x, Dataset) else np.asarray(x)[:max_samples]
        self.feeder = Feeder(specs, data)
        self.batch = 1 if self.feeder.named else self.feeder.batch_size(min(batch, len(self.feeder)))
        self.limit = len(self.feeder) // self.batch * self.batch or len(self.feeder)
        self.set_range(0, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, (None, 0))[0]

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only batches [start_index, end_index) until the next call."""
        batches = self.feeder.batches(self.batch, self.limit)
        self._it = (b for i, b in enumerate(batches) if start_index <= i < end_index)

    def rewind(self) -> None:
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return int(np.ceil(self.limit / self.batch))


@dataclass(frozen=True)
class StaticConfig:
    """One static-quantization setting. `ops=None` quantizes every op ORT can (its default)."""

    method: str = "minmax"
    activations: str = "uint8"
    weights_per_channel: bool = True
    # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW, whose int16 pair sums
    # saturate with full-range weights (ORT's documented workaround). Measured, not assumed.
    reduce_range: bool = False
    ops: tuple[str, ...] | None = COMPUTE_OPS
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def label(self) -> str:
        scope = "all-ops" if self.ops is None else "+".join(o.lower() for o in self.ops)
        act = "u8" if self.activations == "uint8" else "s8"
        w = ("s7" if self.reduce_range else "s8") + ("-per-channel" if self.weights_per_channel else "-per-tensor")
        text = f"int8 static ({self.method}, {act} act, {w} weights, {scope})"
        return text + (f", {len(self.exclude)} layers kept float" if self.exclude else "")


# What `quantize_static` does when given nothing but a model and data.
ORT_DEFAULTS = StaticConfig(method="minmax", activations="int8", weights_per_channel=False, ops=None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantization tools log tracebacks and print progress for conditions they recover from."""
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


# ORT's pre-processing, then less of it each time it fails: symbolic shape inference is the fragile
# step on many exporters' graphs, graph optimization the next.
PREP_STEPS: tuple[tuple[dict[str, bool], str], ...] = (
    ({}, "shape inference and graph optimization"),
    ({"skip_symbolic_shape": True}, "without symbolic shape inference"),
    ({"skip_symbolic_shape": True, "skip_optimization": True}, "without symbolic shape inference or optimization"),
)


def _prepare(model: onnx.ModelProto, path: Path) -> str:
    """Weights as initializers with BatchNorm folded in (ORT only quantizes initializers), then ORT's
    pre-processing, given a file (a ModelProto whose shape inference fails comes back half-rewritten to
    external data), falling back step by step. Returns how the model was prepared."""
    folded, _ = fold_conv_bn(model)
    source = path.with_name("source.onnx")
    save_model(folded, source)
    failures = []
    for kwargs, how in PREP_STEPS:
        try:
            with _quiet(), scratch_cwd():
                quant_pre_process(str(source), str(path), **kwargs)
            onnx.load(str(path), load_external_data=False)
            return how
        except Exception as e:  # noqa: BLE001 - each step's failure only means: try with less
            failures.append(f"{how}: {_first_line(e)}")
    # Quantize the folded model as it is; each candidate that then fails is rejected with its reason.
    shutil.copyfile(source, path)
    if source.with_name("source.onnx.data").exists():
        shutil.copyfile(source.with_name("source.onnx.data"), path.with_name("source.onnx.data"))
    return "unprepared (ORT pre-processing failed: " + "; ".join(failures)[:300] + ")"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class Quantizer:
    """Quantizes one fp32 model many ways, calibrating once per method on a bounded calibration set."""

    def __init__(self, model: onnx.ModelProto, calibration: np.ndarray | Dataset, max_samples: int = 256) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edgewise-quant-")
        self.dir = Path(self._tmp.name)
        self.fp32 = self.dir / "fp32.onnx"
        try:
            self.prepared = _prepare(upgrade_opset(model, 13), self.fp32)
            self.inputs = model_inputs(onnx.load(str(self.fp32), load_external_data=False))
        except BaseException:
            self.close()
            raise
        self.large = model.ByteSize() > LARGE_MODEL_BYTES
        self.x = calibration
        self.max_samples = max_samples
        self.calibrated: dict[str, float] = {}  # method -> seconds its calibration took

    def close(self) -> None:
        self._tmp.cleanup()

    def _reader(self) -> StreamingReader:
        return StreamingReader(self.inputs, self.x, max_samples=self.max_samples)

    def _cache(self, method: str) -> Path:
        """Calibrate every tensor once for this method; later candidates reuse the stored ranges."""
        cache = self.dir / f"calib-{method}.json"
        if not cache.exists():
            start = time.monotonic()
            self._static_file(StaticConfig(method=method, ops=None), self.dir / f"warm-{method}.onnx", cache)
            self.calibrated[method] = time.monotonic() - start
        return cache

    def _static_file(self, cfg: StaticConfig, out: Path, cache: Path) -> None:
        act = QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8
        # One batch per collect_data call: the calibrator summarises each before it sees the next.
        extra = {"CalibPercentile": 99.99, "CalibMovingAverage": False, "CalibStridedMinMax": 1}
        if cfg.activations == "int8":
            extra["ActivationSymmetric"] = False
        try:
            with _quiet():
                quantize_static(
                    str(self.fp32), str(out), self._reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(cfg.ops) if cfg.ops else None, per_channel=cfg.weights_per_channel, reduce_range=cfg.reduce_range,
                    activation_type=act, weight_type=QuantType.QInt8,
                    nodes_to_quantize=list(cfg.only) if cfg.only is not None else None,
                    nodes_to_exclude=list(cfg.exclude), calibrate_method=METHODS[cfg.method],
                    extra_options=extra, calibration_cache_path=str(cache),
                    use_external_data_format=self.large)
        except Exception as e:
            raise OptimizeError(f"{cfg.label()} failed: {_first_line(e)}") from e

    def static(self, cfg: StaticConfig) -> onnx.ModelProto:
        if cfg.method not in METHODS:
            raise OptimizeError(f"unknown calibration method {cfg.method!r}: use {', '.join(METHODS)}")
        out = self.dir / "static.onnx"
        self._static_file(cfg, out, self._cache(cfg.method))
        return onnx.load(str(out))

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        """Calibrated (low, high) per tensor."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        data = load_tensors_data(self._cache(method))
        return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}

    def dynamic(self, ops: tuple[str, ...] = ("MatMul", "Gemm")) -> onnx.ModelProto:
        out = self.dir / "dynamic.onnx"
        try:
            with _quiet():
                quantize_dynamic(str(self.fp32), str(out), op_types_to_quantize=list(ops), per_channel=False,
                                 weight_type=QuantType.QInt8, use_external_data_format=self.large)
        except Exception as e:
            raise OptimizeError(f"int8 dynamic failed: {_first_line(e)}") from e
        return onnx.load(str(out))


def quantize_int4_weights(model: onnx.ModelProto, block_size: int = 32) -> onnx.ModelProto:
    """Weight-only int4 (symmetric, blockwise fp32 scales) for MatMul weights, via ORT's MatMulNBits.

    Gemm is first rewritten as MatMul + Add so fully connected layers from torch exports are covered.
    """
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise OptimizeError(f"int4 weight-only needs {e.name or 'a missing package'} (pip install onnx-ir)") from e

    prepared = gemm_to_matmul(upgrade_opset(model, 13))
    try:
        q = MatMulNBitsQuantizer(prepared, bits=4, block_size=block_size, is_symmetric=True)
        q.process()
    except Exception as e:
        raise OptimizeError(f"int4 weight-only failed: {str(e).splitlines()[0][:200]}") from e
    result = q.model.model
    if not any(n.op_type == "MatMulNBits" for n in result.graph.node):
        raise OptimizeError("int4 weight-only: the model has no MatMul/Gemm with constant weights")
    return result


FP16_MAX = 65504.0


def fp16_unsafe_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that must stay float32 because a constant they read lies beyond float16's range (a BatchNorm
    variance of 1e7 in PaddleOCR's detector, say: the converter would clamp it to 1e4 and the output would be
    wrong everywhere). The Constant nodes that hold such values stay float32 too. Unnamed nodes are named."""
    from onnx import numpy_helper

    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}_edgewise"
    big: dict[str, str | None] = {}
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and np.abs(numpy_helper.to_array(t)).max(initial=0.0) > FP16_MAX:
            big[t.name] = None
    for out, (n, t) in _float_constants(model.graph).items():
        if np.abs(numpy_helper.to_array(t)).max(initial=0.0) > FP16_MAX:
            big[out] = n.name
    if not big:
        return []
    return sorted({n.name for n in model.graph.node if any(i in big for i in n.input)}
                  | {name for name in big.values() if name})


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations in float16, inputs and outputs kept float32 (a Cast at each end), with ONNX
    Runtime's float16 converter; ops that have no float16 form are left in float32 behind casts. Half the
    weight bytes; faster only where the hardware has fp16 arithmetic (GPUs, TensorRT, Arm v8.2+), which is
    why the search measures it rather than assumes it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.ModelProto()
    m.CopyFrom(model)  # the converter rewrites the model it is given
    try:
        half = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=False,
                                        node_block_list=fp16_unsafe_nodes(m))
    except Exception as e:  # the converter raises assorted errors for graphs it cannot type
        raise OptimizeError(f"float16 conversion failed: {e}") from e
    drop_cast_round_trips(half.graph)
    toposort(half.graph)  # the converter appends its Casts at the end: ORT runs that, ONNX's checker refuses it
    return half


def drop_cast_round_trips(graph: onnx.GraphProto) -> int:
    """In place: where a float32 tensor is cast to float16 and straight back to float32, its readers read the
    float32 tensor itself. The converter puts such a pair between two nodes it keeps in float32 (a Constant
    beyond float16's range and the BatchNorm that reads it, in PaddleOCR's detector), and the value it was
    keeping became inf on the way. Returns how many pairs were bypassed; Casts left unread are removed."""
    f32 = _float32_names(graph)
    producer = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}
    outputs = {o.name for o in graph.output}
    for n in graph.node:
        if n.op_type != "Cast" or _cast_to(n) != onnx.TensorProto.FLOAT or n.output[0] in outputs:
            continue
        inner = producer.get(n.input[0])
        if inner is not None and inner.op_type == "Cast" and _cast_to(inner) == onnx.TensorProto.FLOAT16 \
                and inner.input[0] in f32:
            rename[n.output[0]] = inner.input[0]
    if not rename:
        return 0
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    read = {x for n in graph.node for x in _reads(n)} | outputs
    while True:  # the bypassed Casts, then the float16 Casts only they read
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        read = {x for n in graph.node for x in _reads(n)} | outputs
    return len(rename)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _float32_names(graph: onnx.GraphProto) -> set[str]:
    """Names known to hold float32: inputs, initializers, Constants and typed value_info."""
    names = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names |= {v.name for v in list(graph.input) + list(graph.value_info)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return names | set(_float_constants(graph))


def _float_constants(graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, onnx.TensorProto]]:
    """The float32 tensors Constant nodes hold, by the name they output."""
    return {n.output[0]: (n, n.attribute[0].t) for n in graph.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR
            and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT}


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads: its inputs, and what the nodes of its subgraphs (Loop, If, Scan) read."""
    names = set(node.input)
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                names |= _reads(n)
    return names


def toposort(graph: onnx.GraphProto) -> None:
    """In place: every node after the nodes whose outputs it reads (subgraphs' reads of the outer scope
    included), the original order kept where it already is."""
    made = {o for n in graph.node for o in n.output}
    have = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pending, order = [(i, n, _reads(n)) for i, n in enumerate(graph.node)], []  # reads found once, not per pass
    while pending:
        waiting = []
        for i, n, reads in pending:
            if all(x in have or x not in made for x in reads):
                order.append((i, n))
                have.update(n.output)
            else:
                waiting.append((i, n, reads))
        if len(waiting) == len(pending):  # a cycle: leave the rest as it was, for the checker to name
            order += [(i, n) for i, n, _ in waiting]
            break
        pending = waiting
    if [i for i, _ in order] != list(range(len(order))):
        nodes = [onnx.NodeProto() for _ in order]
        for dst, (_, src) in zip(nodes, order):
            dst.CopyFrom(src)
        del graph.node[:]
        graph.node.extend(nodes)
