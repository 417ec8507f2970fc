"""Quantization passes on top of onnxruntime.quantization: static QDQ int8, dynamic int8, int4 weight-only.

What we add is bookkeeping: calibration runs once per method (ORT's calibration cache) and is reused by
every candidate, calibration batches are streamed and bounded, and every result is a plain ModelProto.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

from edgewise.errors import OptimizeError
from edgewise.modelio import upgrade_opset
from edgewise.optimize.fuse import fold_conv_bn, gemm_to_matmul

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")

logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)


class StreamingReader(CalibrationDataReader):
    """Feeds at most `max_samples` samples in batches; memory stays at one batch beyond the data itself."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16, max_samples: int = 256) -> None:
        self.input_name, self.x, self.batch = input_name, x[:max_samples], batch
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.batch))


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


def _prepare(model: onnx.ModelProto, path: Path) -> None:
    """Weights as initializers with BatchNorm folded in (ORT only quantizes initializers), then ORT's
    pre-processing; its symbolic shape inference fails on some exporters' graphs, so retry without it."""
    folded, _ = fold_conv_bn(model)
    with _quiet():
        try:
            quant_pre_process(folded, str(path))
            return
        except Exception:  # noqa: BLE001 - retry without the fragile symbolic shape inference
            pass
        try:
            quant_pre_process(folded, str(path), skip_symbolic_shape=True)
        except Exception as e:
            raise OptimizeError(f"cannot prepare model for quantization: {str(e).splitlines()[0][:200]}") from e


class Quantizer:
    """Quantizes one fp32 model many ways, calibrating once per method on a bounded calibration set."""

    def __init__(self, model: onnx.ModelProto, calibration_x: np.ndarray, max_samples: int = 256) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edgewise-quant-")
        self.dir = Path(self._tmp.name)
        self.fp32 = self.dir / "fp32.onnx"
        _prepare(upgrade_opset(model, 13), self.fp32)
        self.input_name = onnx.load(str(self.fp32)).graph.input[0].name
        self.x = calibration_x
        self.max_samples = max_samples

    def close(self) -> None:
        self._tmp.cleanup()

    def _reader(self) -> StreamingReader:
        return StreamingReader(self.input_name, self.x, max_samples=self.max_samples)

    def _cache(self, method: str) -> Path:
        """Calibrate every tensor once for this method; later candidates reuse the stored ranges."""
        cache = self.dir / f"calib-{method}.json"
        if not cache.exists():
            self._static_file(StaticConfig(method=method, ops=None), self.dir / f"warm-{method}.onnx", cache)
        return cache

    def _static_file(self, cfg: StaticConfig, out: Path, cache: Path) -> None:
        act = QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8
        extra = {"CalibPercentile": 99.99, "CalibMovingAverage": False}
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
                    extra_options=extra, calibration_cache_path=str(cache))
        except Exception as e:
            raise OptimizeError(f"{cfg.label()} failed: {str(e).splitlines()[0][:200]}") from e

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
                                 weight_type=QuantType.QInt8)
        except Exception as e:
            raise OptimizeError(f"int8 dynamic failed: {str(e).splitlines()[0][:200]}") from e
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
