"""The model manager: verified bundles, ONNX Runtime sessions loaded on demand within a memory budget."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgewise.bundle import Manifest, read_bundle, verify_bundle
from edgewise.errors import AgentError, EdgewiseError
from edgewise.modelio import embedding_tensor, expose
from edgewise.profile.arena import live_tensor_peak
from edgewise.profile.runtime import fallback_note, make_session

log = logging.getLogger("edgewise.agent.serve.models")

POLICIES = ("evict-lru", "refuse")


class ModelBudgetExceeded(AgentError):
    """Loading the model would exceed the memory budget and the policy is to refuse."""


@dataclass
class LoadedModel:
    name: str
    manifest: Manifest
    session: ort.InferenceSession
    memory_bytes: int
    providers: list[str]
    input_name: str = ""
    outputs_probabilities: bool = False  # the graph ends in Softmax: scores are its outputs as they are
    features_at: str | None = None  # second session output: the embedding sent upstream in features mode
    loaded_at: float = field(default_factory=time.time)
    rss_delta_bytes: int | None = None  # measured when loading: RSS after session + one run, minus before
    requests: int = 0


def memory_estimate(model_path: Path) -> int:
    """Weights plus the fp32 live-activation peak at batch 1: deterministic, so budgets behave the same
    on every device (measured RSS is reported beside it in /health)."""
    model = onnx.load(str(model_path))
    return model_path.stat().st_size + live_tensor_peak(model, 4)


def memory_need(bundle: Path, manifest: Manifest) -> int:
    """What the budget accounts for a model: the larger of the estimate and the peak memory `optimize`
    measured for it in a fresh process on its target (RSS delta of session + runs), when the bundle has it."""
    measured = manifest.metrics.get("peak_memory_bytes")
    estimate = memory_estimate(Path(bundle) / "model.onnx")
    return max(estimate, int(measured)) if isinstance(measured, (int, float)) else estimate


def rss_bytes() -> int | None:
    """This process's resident set size (Linux /proc); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ModelManager:
    """Holds several models within `budget_bytes`; least recently used ones are evicted (or loading is
    refused) when a new one would not fit, and are reloaded on their next request."""

    def __init__(self, budget_bytes: int = 512 * 2**20, policy: str = "evict-lru", threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), runtime: str = "onnxruntime",
                 build_dir: Path | None = None, features: bool = False, features_at: str | None = None,
                 trust: list[Path] | None = None) -> None:
        if runtime not in ("onnxruntime", "c"):
            raise AgentError(f"runtime must be 'onnxruntime' or 'c', got {runtime!r}")
        if features and runtime == "c":
            raise AgentError("features-mode escalation needs the ONNX Runtime runtime: the generated C "
                             "returns only the model's output")
        # Features mode: sessions also return an intermediate tensor (default: the penultimate embedding).
        self.features, self.features_at = features, features_at
        self.runtime, self.build_dir = runtime, build_dir or Path("agent-data") / "c-build"
        if policy not in POLICIES:
            raise AgentError(f"model manager policy must be one of {POLICIES}, got {policy!r}")
        self.budget, self.policy, self.threads, self.providers = budget_bytes, policy, threads, providers
        # Release keys: with any, a bundle is served only if its signature verifies against one of them.
        self.trust = None
        if trust:
            from edgewise.bundle.signing import TrustStore

            self.trust = TrustStore.load(list(trust))
        self._bundles: dict[str, tuple[Path, Manifest, int]] = {}
        self._providers: dict[str, tuple[str, ...]] = {}
        self._fallbacks: dict[str, str] = {}  # model -> why its bundle's runtime is not the one running it
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._last: LoadedModel | None = None
        self.evictions = 0
        self.loads = 0

    def register(self, bundle: Path) -> str:
        """Verify a bundle (every file's hash) and make its model servable under the manifest's name."""
        try:
            if self.trust is not None:
                from edgewise.bundle.signing import verify_signed_bundle

                manifest, _key = verify_signed_bundle(bundle, self.trust)
            else:
                manifest = verify_bundle(bundle)
        except EdgewiseError as e:
            raise AgentError(f"cannot serve {bundle}: {e}") from e
        need = memory_need(Path(bundle), manifest)
        if need > self.budget:
            raise ModelBudgetExceeded(f"model {manifest.name} needs {need:,} bytes; the budget is {self.budget:,}")
        self._bundles[manifest.name] = (Path(bundle), manifest, need)
        self._providers[manifest.name] = self._wanted_providers(manifest)
        return manifest.name

    def _wanted_providers(self, manifest: Manifest) -> tuple[str, ...]:
        """Execution providers the bundle was chosen on (`runtime.providers`: a GPU target's model can be
        chosen for the device's CPU), else those its target profile asks for (CUDA/TensorRT on an edge node,
        ...), else this manager's default for targets this install does not know."""
        from edgewise.targets import load_target

        rt = manifest.runtime or {}
        if rt.get("engine", "onnxruntime") == "onnxruntime" and rt.get("providers"):
            return tuple(str(p) for p in rt["providers"])
        try:
            return load_target(manifest.target).execution_providers
        except EdgewiseError:
            return self.providers

    def replace(self, bundle: Path) -> str:
        """Serve a new bundle under its name (an OTA switch): verified and loaded now. A model that fails
        to load raises here with the old registration and session put back, so the caller can roll back."""
        try:
            name = read_bundle(bundle).name
        except EdgewiseError as e:
            raise AgentError(f"cannot serve {bundle}: {e}") from e
        before = (self._bundles.get(name), self._providers.get(name))
        self.register(bundle)
        with self._lock:
            old = self._loaded.pop(name, None)
            self._last = None
        try:
            self.get(name)
        except Exception:
            with self._lock:
                for table, entry in zip((self._bundles, self._providers), before):
                    if entry is None:
                        table.pop(name, None)
                    else:
                        table[name] = entry
                if old is not None:
                    self._loaded[name] = old
            raise
        return name

    @property
    def names(self) -> list[str]:
        return list(self._bundles)

    def manifest(self, name: str) -> Manifest:
        if name not in self._bundles:
            raise AgentError(f"unknown model {name!r}; serving: {', '.join(self._bundles) or 'none'}")
        return self._bundles[name][1]

    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._loaded.values())

    def get(self, name: str) -> LoadedModel:
        # Hot path: the model asked for is already the most recently used one; no lock, no reordering.
        # (Reading a dict while another thread updates it is safe in CPython; the slow path takes the lock.)
        m = self._last
        if m is not None and m.name == name and name in self._loaded:
            return m
        with self._lock:
            m = self._loaded.get(name)
            if m is not None:
                self._loaded.move_to_end(name)
                self._last = m
                return m
            path, manifest, need = self._bundles.get(name, (None, None, 0))
            if path is None or manifest is None:
                raise AgentError(f"unknown model {name!r}; serving: {', '.join(self._bundles) or 'none'}")
            while self._loaded and self.used_bytes() + need > self.budget:
                if self.policy == "refuse":
                    raise ModelBudgetExceeded(
                        f"loading {name} ({need:,} bytes) would exceed the budget ({self.used_bytes():,} of "
                        f"{self.budget:,} bytes in use); policy: refuse")
                self._loaded.popitem(last=False)
                self.evictions += 1
            data = self._verified(name, "model.onnx")
            proto = onnx.load_from_string(data)  # parsed once: features mode and the Softmax check read it
            rss_before = rss_bytes()
            features_at = None
            if self.runtime == "c":  # the generated C, as the device runs it
                from edgewise.agent.serve.cmodel import CSession

                try:
                    session = CSession(path / "model.onnx", self.build_dir)
                except EdgewiseError as e:
                    raise AgentError(f"cannot run {name} as C: {e}") from e
            else:
                if self.features and "split" not in manifest.artifacts:  # a tail forwards its own input
                    try:
                        features_at = self.features_at or embedding_tensor(proto)
                        proto = expose(proto, features_at)
                        data = proto.SerializeToString()
                    except EdgewiseError as e:
                        raise AgentError(f"cannot serve {name} in features mode: {e}") from e
                session = self._session(name, manifest, data)
            graph = proto.graph
            ends_in_softmax = any(n.op_type == "Softmax" and n.output[0] == graph.output[0].name for n in graph.node)
            loaded = LoadedModel(name, manifest, session, need, session.get_providers(),
                                 session.get_inputs()[0].name, ends_in_softmax, features_at)
            if rss_before is not None:
                self._warm_up(loaded)
                after = rss_bytes()
                loaded.rss_delta_bytes = None if after is None else max(0, after - rss_before)
            self._loaded[name] = loaded
            self._last = loaded
            self.loads += 1
            return loaded

    def _session(self, name: str, manifest: Manifest, data: bytes) -> Any:
        """The runtime the bundle was chosen on (`manifest.runtime`): OpenVINO on its device where it can
        run here, else ONNX Runtime with the target's providers (CPU last), the fallback noted for /health."""
        rt = manifest.runtime or {}
        if rt.get("engine") == "openvino":
            from edgewise.profile.openvino import OpenVinoSession, available

            device = rt.get("device", "CPU")
            spec = f"openvino:{device}" + (f":{rt['precision']}" if rt.get("precision") else "")
            why = available()
            if why is None:
                try:
                    session = OpenVinoSession(data, device, self._threads(manifest), rt.get("precision"),
                                              self._ir(name, manifest))
                    self._fallbacks.pop(name, None)
                    return session
                except EdgewiseError as e:
                    why = str(e)
            self._fallbacks[name] = f"{spec} wanted: {why}; running on ONNX Runtime's CPUExecutionProvider"
            log.warning("model %s: %s", name, self._fallbacks[name])
            return make_session(data, threads=self._threads(manifest), providers=("CPUExecutionProvider",),
                                runtime="onnxruntime")
        return make_session(data, threads=self._threads(manifest), providers=self._providers[name], runtime="onnxruntime",
                            reference=_exact_int8(manifest))

    def _ir(self, name: str, manifest: Manifest) -> tuple[bytes, bytes] | None:
        """The OpenVINO IR the bundle carries (model.xml + model.bin), checked against the manifest's hashes."""
        if "model.xml" not in manifest.files:
            return None
        return self._verified(name, "model.xml"), self._verified(name, "model.bin")

    def _verified(self, name: str, fname: str) -> bytes:
        """A bundle file's bytes, as they were verified: one swapped (or gone) since registration is refused."""
        path, manifest, _ = self._bundles[name]
        f = path / fname
        data = f.read_bytes() if f.is_file() else b""
        if fname not in manifest.files or hashlib.sha256(data).hexdigest() != manifest.files[fname]["sha256"]:
            raise AgentError(f"cannot serve {name}: {f} changed since its bundle was verified")
        return data

    def _threads(self, manifest: Manifest) -> int:
        """The agent's own setting if it has one; else the threads the bundle was measured with (0 = all cores)."""
        if self.threads is not None:
            return self.threads
        return int((manifest.runtime or {}).get("threads", 1))

    @staticmethod
    def _warm_up(m: LoadedModel) -> None:
        """One batch-1 run on zeros, so the measured memory includes the activations' arena."""
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in m.manifest.inputs[0]["shape"]] \
            if m.manifest.inputs else []
        if not shape:
            return
        dtype = np.dtype(m.manifest.inputs[0].get("dtype", "float32"))
        try:
            m.session.run(None, {m.input_name: np.zeros(shape, dtype)})
        except Exception as e:  # a warm-up must never stop a model from loading; its first request will tell
            log.warning("warm-up of %s failed (%s: %s); its first request will tell", m.name, type(e).__name__, e)

    def health(self) -> dict[str, Any]:
        have = ort.get_available_providers()
        eps = {}
        for name, wanted in self._providers.items():
            rt = self._bundles[name][1].runtime if name in self._bundles else {}
            if rt.get("engine") == "openvino":
                spec = f"OpenVINO:{rt.get('device', 'CPU')}"
                fb = self._fallbacks.get(name)
                eps[name] = {"wanted": [spec], "running_on": "CPUExecutionProvider" if fb else spec, "fallback": fb}
                continue
            # a loaded model says where it really runs (a provider can be built in yet fail to start)
            loaded = self._loaded.get(name)
            running = loaded.providers[0] if loaded is not None and loaded.providers else next(
                (p for p in wanted if p in have), "CPUExecutionProvider")
            eps[name] = {"wanted": list(wanted), "running_on": running, "fallback": fallback_note(wanted, running)}
        return {"budget_bytes": self.budget, "used_bytes": self.used_bytes(), "policy": self.policy,
                "loaded": {n: {"version": m.manifest.version, "memory_bytes": m.memory_bytes,
                               "rss_delta_bytes": m.rss_delta_bytes,
                               "providers": m.providers, "requests": m.requests} for n, m in self._loaded.items()},
                "registered": self.names, "evictions": self.evictions, "loads": self.loads,
                "available_providers": have, "execution_providers": eps}


def _exact_int8(manifest: Manifest) -> bool:
    """True for an int8 bundle made for an int8-only target (an MCU, whose C kernels compute int8 exactly)
    served on a CPU whose fused int8 kernels saturate (x86 without VNNI): it then runs with exact int8
    semantics, so the agent answers as the device does (on an AVX2 EPYC the fused kernels changed the labels
    of a keyword model's clips)."""
    from edgewise.profile.cpu import int8_saturates
    from edgewise.targets import load_target

    if manifest.precision != "int8" or not int8_saturates():
        return False
    try:
        return load_target(manifest.target).int8_only
    except EdgewiseError:  # a target this install does not know
        return False
