"""Timing models on the device itself: a remote agent started with `--allow-bench` (issue 12).

The build host uploads each candidate once (its id is its content hash), then asks for one interleaved
latency run over several of them, with the thread count and execution providers the target names. The
figures come back labelled with the device and the provider each model ran on.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import onnx

from edgewise.data import Dataset
from edgewise.errors import ProfileError
from edgewise.profile.feeds import Feeder, model_inputs
from edgewise.profile.measure import LatencyStats

ID_LEN = 16  # as the agent's benchsvc.model_id
KEEPS = 24  # the agent's default for how many uploaded models it holds (benchsvc.MAX_MODELS), until it says


class RemoteBench:
    """A remote agent's `/v1/bench/*` endpoints, from the build host's side. One per URL in a process
    (`RemoteBench.at`), so a model is uploaded once however many runs it takes part in."""

    _open: dict[str, RemoteBench] = {}

    @classmethod
    def at(cls, url: str) -> RemoteBench:
        key = url.rstrip("/")
        if key not in cls._open:
            cls._open[key] = cls(url)
        return cls._open[key]

    def __init__(self, url: str, timeout_s: float = 900.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ProfileError(f"--measure-on wants the agent's URL, like http://device:8080 (got {url!r})")
        self.url, self.timeout = url.rstrip("/"), timeout_s
        self.machine: dict[str, Any] | None = None
        self._uploaded: set[str] = set()
        self._bytes: dict[str, bytes] = {}  # to upload again if the device has let a model go
        self._irs: dict[str, tuple[bytes, bytes]] = {}  # model id -> the OpenVINO IR it names (xml, bin)
        self.keeps = KEEPS  # how many uploaded models the device holds at once (it says so with each upload)

    def device_machine(self) -> dict[str, Any]:
        """What the device is (`/health`'s bench.machine: architecture, CPU, its flags, ONNX Runtime), asked
        once, before any run: some recipes depend on the device's CPU (int8 weights' bits without VNNI)."""
        if self.machine is None:
            health = self._request(urllib.request.Request(self.url + "/health"), "/health", timeout=30.0)
            bench = health.get("bench") if isinstance(health, dict) else None
            if not isinstance(bench, dict):
                raise ProfileError(f"the agent at {self.url} does not measure for others: start it with "
                                   "--allow-bench")
            self.machine = bench.get("machine") or {}
        return self.machine

    def _post(self, path: str, body: bytes, ctype: str, raw: bool = False) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers={"Content-Type": ctype})
        return self._request(req, path, raw)

    def _request(self, req: urllib.request.Request, path: str, raw: bool = False,
                 timeout: float | None = None) -> Any:
        """The answer's JSON (or, `raw`, its bytes and the provider it ran on); else a readable error."""
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout, timeout or self.timeout)) as r:
                return (r.read(), r.headers.get("X-Running-On", "")) if raw else json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                why = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                why = ""
            if e.code == 413:
                why = why or "larger than the agent accepts in one request (1 GiB for a model, 16 MB otherwise)"
            raise ProfileError(f"the device at {self.url} refused {path} ({e.code}): {why or e.reason}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ProfileError(f"cannot measure on the device at {self.url}: {reason}") from e

    def upload(self, model: onnx.ModelProto) -> str:
        from edgewise.profile.openvino import ir_files

        data = model.SerializeToString()
        mid = hashlib.sha256(data).hexdigest()[:ID_LEN]
        self._bytes[mid] = data
        files = ir_files(model)  # NNCF's int8 for OpenVINO travels as an IR beside the ONNX graph
        if files:
            self._irs[mid] = (files["model.xml"], files["model.bin"])
        if mid not in self._uploaded:
            self._send(mid)
        return mid

    def _send(self, mid: str) -> None:
        if mid in self._irs:  # the IR first: the model names it, and the device builds its session from it
            buf = io.BytesIO()
            xml, weights = self._irs[mid]
            np.savez(buf, xml=np.frombuffer(xml, np.uint8), bin=np.frombuffer(weights, np.uint8))
            self._post("/v1/bench/ir", buf.getvalue(), "application/octet-stream")
        answer = self._post("/v1/bench/models", self._bytes[mid], "application/octet-stream")
        got, self.keeps = answer["id"], max(2, int(answer.get("keeps", self.keeps)))
        if got != mid:
            raise ProfileError(f"the device at {self.url} stored the model under {got!r}, not {mid!r}")
        self._uploaded.add(mid)

    def _ask(self, path: str, params: dict[str, Any], ids: list[str], feed: dict[str, np.ndarray],
             raw: bool = False) -> Any:
        """POST a feed (.npz) that concerns uploaded models `ids`; should the device have let one go (it
        restarted, or keeps only its latest uploads), they are sent again and the request is made once more."""
        buf = io.BytesIO()
        np.savez(buf, **feed)
        url = f"{path}?{urllib.parse.urlencode(params)}"
        try:
            return self._post(url, buf.getvalue(), "application/x-npz", raw=raw)
        except ProfileError as e:
            if "no uploaded model" not in str(e) or not all(m in self._bytes for m in ids):
                raise
            for m in ids:
                self._send(m)
            return self._post(url, buf.getvalue(), "application/x-npz", raw=raw)

    def run(self, ids: list[str], feed: dict[str, np.ndarray], runs: int, warmup: int, threads: int,
            providers: tuple[str, ...]) -> tuple[list[LatencyStats], list[str]]:
        """Latency of the uploaded models, interleaved on the device; and where each ran ("CUDAExecutionProvider").
        More models than the device keeps at once are measured in groups, each with the first model (the
        starting model, in the search), whose figure from the first group stands."""
        if len(ids) <= self.keeps:
            return self._run(ids, feed, runs, warmup, threads, providers)
        stats: dict[int, LatencyStats] = {}
        ran: dict[int, str] = {}
        rest = list(range(1, len(ids)))
        for k in range(0, len(rest), self.keeps - 1):
            group = [0, *rest[k:k + self.keeps - 1]]
            got, where = self._run([ids[i] for i in group], feed, runs, warmup, threads, providers)
            for i, s, w in zip(group, got, where):
                stats.setdefault(i, s)
                ran.setdefault(i, w)
        return [stats[i] for i in range(len(ids))], [ran[i] for i in range(len(ids))]

    def _run(self, ids: list[str], feed: dict[str, np.ndarray], runs: int, warmup: int, threads: int,
             providers: tuple[str, ...]) -> tuple[list[LatencyStats], list[str]]:
        out = self._ask("/v1/bench/run", {"models": ",".join(ids), "runs": runs, "warmup": warmup, "threads": threads,
                                          "providers": ",".join(providers)}, ids, feed)
        self.machine = out.get("machine")
        try:
            stats = [LatencyStats(**out["latency"][m]) for m in ids]
            return stats, [str(out["running_on"][m]) for m in ids]
        except (KeyError, TypeError) as e:
            raise ProfileError(f"the device at {self.url} answered without the figures asked for ({e})") from e

    def memory(self, mid: str, feed: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
        """Peak memory of one uploaded model, probed in a fresh process on the device (as `measure_memory`
        answers here: rss_delta_bytes, load_delta_bytes, running_on)."""
        out = self._ask("/v1/bench/memory", {"model": mid, "threads": threads}, [mid], feed)
        self.machine = out.get("machine", self.machine)
        if not isinstance(out.get("rss_delta_bytes"), int) or not isinstance(out.get("running_on"), str):
            raise ProfileError(f"the device at {self.url} answered without a memory figure ({sorted(out)})")
        return out

    def infer(self, mid: str, feed: dict[str, np.ndarray], threads: int,
              providers: tuple[str, ...]) -> tuple[list[np.ndarray], str]:
        """One uploaded model's outputs for a batch, computed on the device; and where they were computed."""
        body, where = self._ask("/v1/bench/infer", {"model": mid, "threads": threads,
                                                    "providers": ",".join(providers)}, [mid], feed, raw=True)
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                return [z[f"out{i}"] for i in range(len(z.files))], where
        except (ValueError, OSError, KeyError) as e:
            raise ProfileError(f"the device at {self.url} answered outputs that cannot be read ({e})") from e

    def session(self, model: onnx.ModelProto, threads: int, providers: tuple[str, ...]) -> RemoteSession:
        return RemoteSession(self, model, threads, providers)

    def label(self, running: str) -> str:
        from edgewise.profile.runtime import describe

        host = (self.machine or {}).get("host") or urllib.parse.urlparse(self.url).netloc
        return f"measured on the device ({describe(running)}, {host} via {self.url})"


class RemoteSession:
    """A model on the device, answering `run(None, feed)` as an ORT session does: so fidelity is measured on
    what the device computes, on its own provider."""

    BODY_BYTES = 12 * 2**20  # a request under the agent's 16 MB body cap

    def __init__(self, device: RemoteBench, model: onnx.ModelProto, threads: int, providers: tuple[str, ...]) -> None:
        self.device, self.threads, self.providers = device, threads, providers
        self.mid = device.upload(model)
        self.specs = model_inputs(model)
        self.output_names = [o.name for o in model.graph.output]
        self.ran_on = ""

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs, self.ran_on = self.device.infer(self.mid, feed, self.threads, self.providers)
        if names:
            by = dict(zip(self.output_names, outs))
            return [by[n] for n in names]
        return outs

    def outputs(self, data: Dataset) -> list[np.ndarray]:
        """Every output for every sample (as `Feeder.run`), in requests that stay under the body cap."""
        feeder = Feeder(self.specs, data)
        sample = sum(a[0].nbytes if a.ndim else a.nbytes for a in feeder.one(0).values())
        return feeder.run(self, batch=max(1, min(64, self.BODY_BYTES // max(1, sample))))


__all__ = ["RemoteBench", "RemoteSession"]
