"""Run a bundle's generated C (tier 1) inside the agent through ctypes: the endpoint tier executes the
same code a microcontroller would, instead of ONNX Runtime's x86 kernels."""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx

from edgewise.codegen.compile import compile_model
from edgewise.codegen.reference import quantize_input
from edgewise.errors import AgentError


class _Arg:
    def __init__(self, name: str, shape: list[int | str]) -> None:
        self.name, self.shape = name, shape


class CSession:
    """The subset of onnxruntime.InferenceSession the agent uses (`run`, `get_inputs`, `get_providers`)."""

    def __init__(self, model_path: Path, build_dir: Path) -> None:
        model = onnx.load(str(model_path))
        compiled = compile_model(model)
        self.graph = compiled.graph
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
        lib = build_dir / f"ew_{digest}.so"
        if not lib.exists():
            src = build_dir / f"src_{digest}"
            src.mkdir(parents=True, exist_ok=True)
            for name, text in compiled.sources.items():
                (src / name).write_text(text)
            cmd = ["gcc", "-std=c99", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src / "model.c"),
                   str(src / "ew_kernels.c")]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as e:
                raise AgentError(f"cannot build the C model for the agent: {e}") from e
        self._lib = ctypes.CDLL(str(lib))
        self._invoke = self._lib.ew_model_invoke
        self._invoke.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        t_in, t_out = self.graph.tensors[self.graph.input], self.graph.tensors[self.graph.output]
        self._in_shape, self._out_size = t_in.shape, t_out.size
        self._out_scale, self._out_zp = t_out.scale, t_out.zero_point
        self._input = _Arg(self.graph.input_name, ["batch", *t_in.shape])
        self._lock = threading.Lock()

    def get_inputs(self) -> list[_Arg]:
        return [self._input]

    def get_providers(self) -> list[str]:
        return ["edgewise-C (int8, ctypes)"]

    def run(self, _outputs: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = next(iter(feed.values()))
        out = np.empty((len(x), self._out_size), dtype=np.int8)
        for i, sample in enumerate(x):
            q = np.ascontiguousarray(quantize_input(self.graph, sample.reshape(self._in_shape)))
            # The generated C keeps its activations in one static arena (as on an MCU): not reentrant, so
            # requests from the HTTP thread pool take turns (8 concurrent callers garbled 221 of 12,288).
            with self._lock:
                self._invoke(q.ctypes.data, out[i].ctypes.data)
        return [(out.astype(np.float32) - self._out_zp) * np.float32(self._out_scale)]
