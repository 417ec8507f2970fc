"""Measuring candidates on the device itself (issue 12): the build host uploads candidate models, then asks
for one interleaved latency run over several of them, with the thread count and execution providers the
target names. Off unless the agent is started with `--allow-bench` (a device on the bench, not in the field):
it runs models nobody signed.

Core logic only; the HTTP routes live in service.py.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import onnx

from edgewise.errors import EdgewiseError
from edgewise.profile.feeds import cast_feed, session_inputs
from edgewise.profile.measure import measure_latency, model_memory
from edgewise.profile.runtime import make_session, running_on

# Sessions kept for later runs (the oldest goes first), and the most runs one request may ask for.
MAX_MODELS = 24
MAX_RUNS = 5000
ID_LEN = 16


class BenchError(EdgewiseError):
    """A bench request that cannot be served: unknown model, bad parameters, a model that will not load."""


def model_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:ID_LEN]


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the report."""
    import onnxruntime as ort

    from edgewise.profile import cpu

    return {"host": platform.node(), "arch": platform.machine(), "cpu": cpu.name(), "cores": os.cpu_count(),
            "cpu_flags": cpu.flags(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}


class BenchSessions:
    """Uploaded candidates, each loaded once per (threads, providers), and interleaved latency runs over them."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self.max_models = max_models
        self._models: OrderedDict[str, onnx.ModelProto] = OrderedDict()
        self._sessions: dict[tuple[str, int, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()  # one run at a time: two interleaved runs would measure each other
        self.counts = {"uploads": 0, "runs": 0, "inferences": 0, "memory_probes": 0}

    def add(self, data: bytes) -> str:
        """Keep an uploaded ONNX model; its id is its content hash (uploading it again is free)."""
        try:
            model = onnx.load_from_string(data)
        except Exception as e:  # protobuf raises DecodeError and friends
            raise BenchError(f"not an ONNX model ({type(e).__name__})") from e
        if not model.graph.node:
            raise BenchError("not an ONNX model (no graph)")
        mid = model_id(data)
        with self._lock:
            self._models[mid] = model
            self._models.move_to_end(mid)
            while len(self._models) > self.max_models:
                old, _ = self._models.popitem(last=False)
                for key in [k for k in self._sessions if k[0] == old]:
                    del self._sessions[key]
            self.counts["uploads"] += 1
        return mid

    def add_ir(self, data: bytes) -> str:
        """An OpenVINO IR (an .npz of `xml` and `bin` bytes) that an uploaded model names by its hash (NNCF's
        int8, which runs in place of the model's ONNX graph where OpenVINO is present); returns that hash."""
        import io
        import zipfile

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                xml, weights = z["xml"].tobytes(), z["bin"].tobytes()
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise BenchError(f"not an IR upload (an .npz of xml and bin bytes): {e}") from e
        from edgewise.profile.openvino import register_ir

        return register_ir(xml, weights)

    def _model(self, mid: str) -> onnx.ModelProto:
        if mid not in self._models:
            raise BenchError(f"no uploaded model {mid!r} (upload it first; the device keeps the last "
                             f"{self.max_models})")
        return self._models[mid]

    def _session(self, mid: str, threads: int, providers: tuple[str, ...]) -> Any:
        key = (mid, threads, providers)
        if key not in self._sessions:
            model = self._model(mid)
            try:
                self._sessions[key] = make_session(model, threads=threads, providers=providers)
            except EdgewiseError as e:  # a runtime or IR this device lacks
                raise BenchError(f"the model cannot be loaded here: {e}") from e
        return self._sessions[key]

    def infer(self, mid: str, feed: dict[str, np.ndarray], threads: int,
              providers: tuple[str, ...]) -> tuple[list[np.ndarray], str]:
        """One model's outputs for a batch, as the device computes them (for fidelity measured here), and the
        provider that computed them."""
        with self._lock:
            sess = self._session(mid, threads, providers)
            try:
                outs = sess.run(None, cast_feed(session_inputs(sess), feed))
            except EdgewiseError:
                raise
            except Exception as e:  # ORT's own errors for a feed of the wrong shape
                raise BenchError(f"the model cannot run on this input: {str(e).splitlines()[0][:300]}") from e
            self.counts["inferences"] += 1
            return [np.asarray(o) for o in outs], running_on(sess)

    def memory(self, mid: str, feed: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
        """Peak memory of loading and running one uploaded model in a fresh process on this device, on the
        runtime it names (`profile.measure.model_memory`; ONNX Runtime models on its CPU provider)."""
        if threads < 1:
            raise BenchError("threads must be >= 1 for a memory probe")
        with self._lock:  # not beside a latency run: each would disturb the other
            model = self._model(mid)
            try:
                probe = model_memory(model, threads, feed=feed)
            except EdgewiseError as e:
                raise BenchError(f"the memory probe failed here: {e}") from e
            self.counts["memory_probes"] += 1
        return {**probe, "threads": threads, "machine": machine()}

    def run(self, ids: list[str], feed: dict[str, np.ndarray], runs: int, warmup: int, threads: int,
            providers: tuple[str, ...]) -> dict[str, Any]:
        """Batch-1 latency of the named models, measured in turns, as `measure_latency` does on the host."""
        if not ids:
            raise BenchError("name at least one model")
        if not 1 <= runs <= MAX_RUNS or not 0 <= warmup <= MAX_RUNS:
            raise BenchError(f"runs must be 1..{MAX_RUNS} and warmup 0..{MAX_RUNS}")
        if threads < 0:
            raise BenchError("threads must be >= 0 (0: every core)")
        with self._lock:
            sessions = [self._session(m, threads, providers) for m in ids]
            feeds = [cast_feed(session_inputs(s), feed) for s in sessions]
            if any(set(f) != set(feeds[0]) for f in feeds):
                raise BenchError("the models take different inputs: measure them in separate runs")
            try:
                stats = measure_latency(sessions, feeds[0], runs=runs, warmup=warmup)
            except Exception as e:  # ORT's own errors for a feed of the wrong shape
                raise BenchError(f"the models cannot run on this input: {str(e).splitlines()[0][:300]}") from e
            self.counts["runs"] += 1
        return {"latency": {m: s.as_dict() for m, s in zip(ids, stats)},
                "running_on": {m: running_on(s) for m, s in zip(ids, sessions)},
                "threads": threads, "machine": machine()}


__all__ = ["BenchError", "BenchSessions", "machine", "model_id"]
