"""ONNX Runtime sessions, created the same way for every measurement."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from edgewise.errors import ModelError


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 1,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 reference: bool = False, runtime: str | None = None) -> ort.InferenceSession:
    """A session with full graph optimization; `threads=0` lets ORT use every core.

    `runtime` (default: what a ModelProto's metadata says, `profile.openvino.runtime_of`): `openvino:<DEVICE>`
    compiles the model with OpenVINO instead, behind the same interface (reference semantics are ORT's).

    `reference=True` stops at basic optimizations, so a QDQ model runs as Dequantize -> float op ->
    Quantize: exact int8 semantics up to rounding, without the fused x86 kernels (whose u8 x s8 products
    can saturate on CPUs without VNNI). That is how an MCU's int8 C kernels compute.

    Providers not present in this ONNX Runtime build are skipped (CPU is always the last resort).
    """
    if runtime is None and isinstance(model, onnx.ModelProto):
        from edgewise.profile.openvino import runtime_of

        runtime = runtime_of(model)
    if runtime and runtime.startswith("openvino") and not reference:
        from edgewise.profile.openvino import session_for

        data = Path(model).read_bytes() if isinstance(model, str) else model
        return session_for(data, runtime, threads)  # type: ignore[return-value]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if threads != 1:
        # Spinning worker threads keep a core busy between runs: fine for one model alone, but in interleaved
        # measurements one session's spinners steal the cores of the next (it cost all-core runs ~0.68x).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if reference
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = 3
    have = set(ort.get_available_providers())
    chosen = [p for p in providers if p in have] or ["CPUExecutionProvider"]
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(data, so, providers=chosen)
    except Exception as e:  # ORT raises its own Fail / NotImplemented / InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"ONNX Runtime cannot load the model: {first[:300]}") from e
