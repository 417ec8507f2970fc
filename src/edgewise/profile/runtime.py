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
    compiles the model with OpenVINO instead, behind the same interface (reference semantics are ORT's);
    `onnxruntime:<Provider>[,...]` pins the model to those providers in place of `providers`
    (`pinned_providers`).

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
    providers = pinned_providers(runtime) or providers
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
    chosen = [p for p in providers if p in have and p != "CPUExecutionProvider"]
    if chosen:
        _preload_gpu_libraries()
    chosen = [p for p in chosen if _starts(p)] + ["CPUExecutionProvider"]
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    # A provider that starts may still refuse one model (a graph it cannot take): then the next one is tried,
    # for that model only, and `running_on` tells the truth.
    for i, first in enumerate(chosen):
        try:
            return ort.InferenceSession(data, so, providers=chosen[i:], enable_fallback=0)
        except Exception as e:  # ORT raises its own Fail / NotImplemented / InvalidGraph types
            if first != "CPUExecutionProvider":
                continue
            text = str(e).strip()
            first_line = text.splitlines()[0] if text else type(e).__name__
            raise ModelError(f"ONNX Runtime cannot load the model: {first_line[:300]}") from e
    raise AssertionError("unreachable: the CPU provider is always tried last")


def pinned_providers(runtime: str | None) -> tuple[str, ...] | None:
    """The providers a runtime tag `onnxruntime:<Provider>[,<Provider>...]` pins a model to (a GPU target's
    candidate that runs on the device's CPU); None for plain `onnxruntime`, OpenVINO, or no tag."""
    if runtime and runtime.startswith("onnxruntime:"):
        return tuple(p for p in runtime.partition(":")[2].split(",") if p) or None
    return None


_started: dict[str, bool] = {}


def _starts(provider: str) -> bool:
    """Whether a provider built into this ONNX Runtime can start here (TensorRT without libnvinfer, CUDA
    without cuDNN cannot), found once per process with a one-node model: ORT logs the missing library at
    every session that asks for such a provider, and a search makes hundreds."""
    if provider not in _started:
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
        # an old opset and IR version, which every ONNX Runtime this runs with reads
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        data = probe.SerializeToString()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(data, so, providers=[provider, "CPUExecutionProvider"], enable_fallback=0)
            _started[provider] = provider in sess.get_providers()  # ORT may leave it out instead of raising
        except Exception:  # noqa: BLE001 - whatever ORT raises, the provider did not start...
            try:  # ...unless the probe itself is what failed: then the provider is not judged by it
                ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
                _started[provider] = False
            except Exception:  # noqa: BLE001
                _started[provider] = True
    return _started[provider]


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
