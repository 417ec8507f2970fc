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

from edgewise.errors import ProfileError
from edgewise.profile.measure import LatencyStats

ID_LEN = 16  # as the agent's benchsvc.model_id


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

    def _post(self, path: str, body: bytes, ctype: str) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                why = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                why = ""
            if e.code == 413:
                why = why or "the model is larger than the agent accepts in one request (16 MB)"
            raise ProfileError(f"the device at {self.url} refused {path} ({e.code}): {why or e.reason}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ProfileError(f"cannot measure on the device at {self.url}: {reason}") from e

    def upload(self, model: onnx.ModelProto) -> str:
        data = model.SerializeToString()
        mid = hashlib.sha256(data).hexdigest()[:ID_LEN]
        self._bytes[mid] = data
        if mid not in self._uploaded:
            self._send(mid)
        return mid

    def _send(self, mid: str) -> None:
        got = self._post("/v1/bench/models", self._bytes[mid], "application/octet-stream")["id"]
        if got != mid:
            raise ProfileError(f"the device at {self.url} stored the model under {got!r}, not {mid!r}")
        self._uploaded.add(mid)

    def run(self, ids: list[str], feed: dict[str, np.ndarray], runs: int, warmup: int, threads: int,
            providers: tuple[str, ...]) -> tuple[list[LatencyStats], list[str]]:
        """Latency of the uploaded models, interleaved on the device; and where each ran ("CUDAExecutionProvider")."""
        buf = io.BytesIO()
        np.savez(buf, **feed)
        query = urllib.parse.urlencode({"models": ",".join(ids), "runs": runs, "warmup": warmup, "threads": threads,
                                        "providers": ",".join(providers)})
        try:
            out = self._post(f"/v1/bench/run?{query}", buf.getvalue(), "application/x-npz")
        except ProfileError as e:
            if "no uploaded model" not in str(e) or not all(m in self._bytes for m in ids):
                raise
            for m in ids:  # the device restarted, or kept only its latest uploads: send them again, once
                self._send(m)
            out = self._post(f"/v1/bench/run?{query}", buf.getvalue(), "application/x-npz")
        self.machine = out.get("machine")
        try:
            stats = [LatencyStats(**out["latency"][m]) for m in ids]
            return stats, [str(out["running_on"][m]) for m in ids]
        except (KeyError, TypeError) as e:
            raise ProfileError(f"the device at {self.url} answered without the figures asked for ({e})") from e

    def label(self, running: str) -> str:
        where = running.removeprefix("OpenVINO:").removesuffix("ExecutionProvider")
        engine = "OpenVINO" if running.startswith("OpenVINO") else "ONNX Runtime"
        host = (self.machine or {}).get("host") or urllib.parse.urlparse(self.url).netloc
        return f"measured on the device ({engine} {where}, {host} via {self.url})"


__all__ = ["RemoteBench"]
