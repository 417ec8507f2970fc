"""OpenVINO as a runtime beside ONNX Runtime: the same ONNX model (fp32, or int8 QDQ from NNCF), compiled by
OpenVINO for a device, behind the interface the rest of edgewise uses for an ORT session.

Which runtime a model is meant for travels with it, in its ONNX metadata (`edgewise.runtime`, e.g.
`openvino:CPU`) and in the bundle's manifest (`runtime`), so the search measures each candidate on its own
runtime and the agent loads it the same way. OpenVINO is optional (`pip install edgewise[openvino]`); where it
is missing, candidates for it are reported as not measurable here, and the agent falls back to ONNX
Runtime's CPU provider with the same ONNX file and says so in `/health`.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgewise.errors import ModelError

RUNTIME_KEY = "edgewise.runtime"
IR_KEY = "edgewise.openvino_ir"  # sha256 of an OpenVINO IR (xml + bin) that replaces the ONNX graph on OpenVINO
IR_FILES = ("model.xml", "model.bin")
ORT = "onnxruntime"
_IR_CACHE: dict[str, tuple[bytes, bytes]] = {}  # IR key -> (xml, bin), for IRs built in this process
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
          "i32": "tensor(int32)", "i8": "tensor(int8)", "u8": "tensor(uint8)", "boolean": "tensor(bool)"}


def available() -> str | None:
    """None when OpenVINO can run here, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed here (pip install 'edgewise[openvino]')"
    return None


def runtime_of(model: onnx.ModelProto) -> str:
    """`onnxruntime`, or `openvino:<DEVICE>`, as the model's metadata says."""
    return next((p.value for p in model.metadata_props if p.key == RUNTIME_KEY), ORT)


def tagged(model: onnx.ModelProto, runtime: str) -> onnx.ModelProto:
    """A copy of `model` that says which runtime it is for."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [p for p in out.metadata_props if p.key != RUNTIME_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(keep)
    if runtime != ORT:
        out.metadata_props.add(key=RUNTIME_KEY, value=runtime)
    return out


def with_ir(model: onnx.ModelProto, ov_model: Any, runtime: str) -> onnx.ModelProto:
    """`model` (the ONNX graph a device without OpenVINO runs) tagged for `runtime`, with an OpenVINO model
    (say NNCF's int8 on OpenVINO's own graph) to run in its place where OpenVINO is present. The IR is kept
    in this process under its hash (`ir_files` gives it back for the bundle)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="edgewise-ir-") as tmp:
        ov.save_model(ov_model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        xml, weights = (Path(tmp) / "model.xml").read_bytes(), (Path(tmp) / "model.bin").read_bytes()
    out = tagged(model, runtime)
    out.metadata_props.add(key=IR_KEY, value=register_ir(xml, weights))
    return out


def register_ir(xml: bytes, weights: bytes) -> str:
    """Keep an IR in this process under its hash (the key a model's metadata names it by)."""
    import hashlib

    key = hashlib.sha256(xml + weights).hexdigest()
    _IR_CACHE[key] = (xml, weights)
    return key


def ir_key(model: onnx.ModelProto) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == IR_KEY), None)


def ir_files(model: onnx.ModelProto) -> dict[str, bytes]:
    """The OpenVINO IR files a model carries (for the bundle), or none."""
    key = ir_key(model)
    if key is None:
        return {}
    if key not in _IR_CACHE:
        raise ModelError("the model names an OpenVINO IR that was not built in this process")
    xml, weights = _IR_CACHE[key]
    return {"model.xml": xml, "model.bin": weights}


def ir_size(model: onnx.ModelProto) -> int | None:
    key = ir_key(model)
    return None if key is None or key not in _IR_CACHE else sum(len(b) for b in _IR_CACHE[key])


@dataclass(frozen=True)
class _Arg:  # what ORT's NodeArg offers the feeders: name, shape, type
    name: str
    shape: list[Any]
    type: str


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for `device`, answering `run(None, feed)` as an ORT session does.
    `threads=0` lets OpenVINO use every core; `precision` is its INFERENCE_PRECISION_HINT (f32, f16, bf16)."""

    def __init__(self, model: onnx.ModelProto | bytes, device: str = "CPU", threads: int = 1,
                 precision: str | None = None, ir: tuple[bytes, bytes] | None = None) -> None:
        import openvino as ov

        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        if ir is None and isinstance(model, onnx.ModelProto) and ir_key(model) is not None:
            key = ir_key(model)
            if key not in _IR_CACHE:
                raise ModelError("the model names an OpenVINO IR that is not here")
            ir = _IR_CACHE[key]
        core = ov.Core()
        if device not in core.available_devices:
            raise ModelError(f"OpenVINO has no {device} device here (it has {', '.join(core.available_devices)})")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            with tempfile.TemporaryDirectory(prefix="edgewise-ov-") as tmp:
                path = Path(tmp) / "model.onnx"
                if ir is not None:  # the IR replaces the ONNX graph (both files are read before the dir goes)
                    path = Path(tmp) / "model.xml"
                    path.write_bytes(ir[0])
                    (Path(tmp) / "model.bin").write_bytes(ir[1])
                else:
                    path.write_bytes(data)
                ov_model = core.read_model(str(path))
                # A dynamic batch is compiled as batch 1 (OpenVINO plans static shapes ahead and runs them
                # faster: 1.28x on MobileNetV3-small here); a call with another batch compiles the dynamic
                # graph then.
                self._dynamic, batch1 = ov_model.clone(), _batch_one(ov_model)
                if batch1:
                    ov_model.reshape(batch1)
                self.compiled = core.compile_model(ov_model, device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with its own text for what it cannot read
            raise ModelError(f"OpenVINO cannot compile the model for {device}: {str(e).strip().splitlines()[0][:300]}"
                             ) from e
        self.device, self._core, self._config = device, core, config
        self._static = {k: tuple(v) for k, v in batch1.items()} if batch1 else None
        self._request = self.compiled.create_infer_request()
        self._dynamic_request: Any = None
        self._lock = threading.Lock()  # one infer request: calls are serialized, as the agent's callers expect

    @staticmethod
    def _arg(port: Any) -> _Arg:
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        return _Arg(port.get_any_name(), shape, _TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"))

    def get_inputs(self) -> list[_Arg]:  # as the model declares them (any batch), not as compiled for batch 1
        return [self._arg(p) for p in self._dynamic.inputs]

    def get_outputs(self) -> list[_Arg]:
        return [self._arg(p) for p in self._dynamic.outputs]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def _request_for(self, feed: dict[str, np.ndarray]) -> Any:
        if self._static is None or all(tuple(np.shape(v)) == self._static.get(k) for k, v in feed.items()):
            return self._request
        if self._dynamic_request is None:
            self._dynamic_request = self._core.compile_model(self._dynamic, self.device,
                                                             self._config).create_infer_request()
        return self._dynamic_request

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            outs = [np.array(v) for v in self._request_for(feed).infer(feed).to_tuple()]  # in output order
        if names:
            by = {a.name: o for a, o in zip(self.get_outputs(), outs)}
            return [by[n] for n in names]
        return outs


def _batch_one(ov_model: Any) -> dict[str, list[int]] | None:
    """Input shapes with a dynamic first dimension set to 1, when that is the only dynamic dimension of each
    input that has one (a dynamic image size or sequence length stays dynamic); None when nothing changes."""
    shapes: dict[str, list[int]] = {}
    dynamic = False
    for port in ov_model.inputs:
        dims = list(port.get_partial_shape())
        if not dims or any(d.is_dynamic for d in dims[1:]):
            return None
        dynamic |= dims[0].is_dynamic
        shapes[port.get_any_name()] = [1 if dims[0].is_dynamic else dims[0].get_length(),
                                       *(d.get_length() for d in dims[1:])]
    return shapes if dynamic else None


def parse_runtime(runtime: str) -> tuple[str, str | None]:
    """`openvino:<DEVICE>[:<precision>]` -> (device, precision hint or None)."""
    _, _, rest = runtime.partition(":")
    device, _, precision = (rest or "CPU").partition(":")
    return device or "CPU", precision or None


def session_for(model: onnx.ModelProto | bytes, runtime: str, threads: int = 1) -> OpenVinoSession:
    """The OpenVINO session a model's runtime tag (`openvino:<DEVICE>[:<precision>]`) names."""
    device, precision = parse_runtime(runtime)
    return OpenVinoSession(model, device, threads, precision)


__all__ = ["IR_FILES", "ORT", "RUNTIME_KEY", "OpenVinoSession", "available", "ir_files", "ir_size", "parse_runtime",
           "register_ir", "runtime_of", "session_for", "tagged", "with_ir"]
