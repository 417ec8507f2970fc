"""ONNX Runtime sessions, created the same way for every measurement."""

from __future__ import annotations

import contextlib
import io
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
    have = set(ort.get_available_providers()) - _cannot_start
    chosen = [p for p in providers if p in have and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
    if len(chosen) > 1:
        _preload_gpu_libraries()
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    # A provider can be built in yet unable to start (TensorRT without libnvinfer, CUDA without cuDNN): ORT
    # then leaves it out of the session, logging the missing library, and `running_on` tells the truth. Such a
    # provider is not asked for again in this process, so the log appears once, not at every session (a search
    # makes hundreds). A provider that raises for one model (a graph it refuses) is skipped for that model only.
    for i, first in enumerate(chosen):
        try:
            sess = ort.InferenceSession(data, so, providers=chosen[i:], enable_fallback=0)
        except Exception as e:  # ORT raises its own Fail / NotImplemented / InvalidGraph types
            if first != "CPUExecutionProvider":
                continue
            text = str(e).strip()
            first_line = text.splitlines()[0] if text else type(e).__name__
            raise ModelError(f"ONNX Runtime cannot load the model: {first_line[:300]}") from e
        _cannot_start.update(set(chosen[i:]) - set(sess.get_providers()))
        return sess
    raise AssertionError("unreachable: the CPU provider is always tried last")


# providers ORT left out of a session it was asked for: they could not start here at all
_cannot_start: set[str] = set()
_preloaded: list[bool] = []


def _preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the `nvidia-*` pip packages (`pip install onnxruntime-gpu[cuda,cudnn]`), so
    the CUDA provider starts without LD_LIBRARY_PATH; where they are not pip-installed, nothing happens and
    the system's libraries are used."""
    if _preloaded:
        return
    _preloaded.append(True)
    preload = getattr(ort, "preload_dlls", None)  # ONNX Runtime 1.21+
    if preload is not None:
        try:  # it prints its warnings; a CLI's stdout may be JSON
            with contextlib.redirect_stdout(io.StringIO()):
                preload()
        except Exception:  # noqa: S110 - a missing library shows as the provider falling back, reported by name
            pass


def running_on(sess: object) -> str:
    """The execution provider (or OpenVINO device) a session actually runs on."""
    providers = sess.get_providers()  # type: ignore[attr-defined]
    return str(providers[0]) if providers else "CPUExecutionProvider"


def describe(running: str) -> str:
    """'ONNX Runtime CUDA', 'OpenVINO CPU': the engine and where, from what `running_on` says."""
    engine = "OpenVINO" if running.startswith("OpenVINO") else "ONNX Runtime"
    return f"{engine} {running.removeprefix('OpenVINO:').removesuffix('ExecutionProvider')}"


def measured_on(sess: object) -> str:
    """How a latency figure was measured, for reports: the engine and where, on the build host."""
    return f"measured ({describe(running_on(sess))}, this machine)"


def fallback_note(wanted: tuple[str, ...] | list[str], running: str) -> str | None:
    """'X, Y not available here: running on Z' when a session runs on a later choice than the first wanted."""
    skipped = list(wanted[: list(wanted).index(running)]) if running in wanted else list(wanted)
    skipped = [p for p in skipped if p != running]
    return f"{', '.join(skipped)} not available here: running on {running}" if skipped else None
