"""The one I/O boundary between a tier and the tier above it.

The sync loop and the cascade talk only to `Upstream`: `HttpUpstream` speaks HTTP to the next
agent, `InProcessUpstream` hands batches to a receiver in the same process (tests, simulations).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import socket
import urllib.error
import urllib.request
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgewise.agent.forward.queue import Item
from edgewise.errors import AgentError


class UpstreamUnavailable(AgentError):
    """The link is down or the upstream failed: keep the items, retry later."""


def _event(i: Item) -> dict[str, Any]:
    """JSON payloads travel as JSON (`json`), anything else base64 (`payload`); defaults are left out."""
    e: dict[str, Any] = {"key": i.key, "topic": i.topic, "created": round(i.created, 3)}
    if i.priority:
        e["priority"] = i.priority
    try:
        e["json"] = json.loads(i.payload)
    except (ValueError, UnicodeDecodeError):
        e["payload"] = base64.b64encode(i.payload).decode()
    return e


def encode_batch(items: Sequence[Item]) -> bytes:
    """A gzip-compressed JSON batch: result events repeat the same keys, so they shrink ~5x."""
    return gzip.compress(json.dumps({"events": [_event(i) for i in items]}, separators=(",", ":")).encode(), 6)


MAX_BATCH_BYTES = 32 * 2**20  # a batch decompressed: far above what a device sends, far below a gzip bomb


def _gunzip(body: bytes, limit: int = MAX_BATCH_BYTES) -> bytes:
    """Decompress a gzip body of at most `limit` bytes expanded. The size is counted first in 1 MiB steps
    that are thrown away, so a bomb costs a megabyte of memory, not the limit."""
    d, size, data = zlib.decompressobj(16 + zlib.MAX_WBITS), 0, body
    while data:
        size += len(d.decompress(data, 1 << 20))
        if size > limit:
            raise ValueError(f"batch expands past {limit:,} bytes")
        data = d.unconsumed_tail
    return zlib.decompress(body, 16 + zlib.MAX_WBITS)


def _text(e: dict[str, Any], key: str) -> str:
    v = e[key]
    if not isinstance(v, str) or not 0 < len(v) <= 256:
        raise TypeError(f"{key} must be a string of 1 to 256 characters")
    v.encode("utf-8")  # a lone surrogate cannot be stored
    return v


def decode_batch(body: bytes) -> list[Item]:
    """Parse a batch (gzip or plain JSON); any malformed field is an AgentError (the receiver answers 400)."""
    try:
        if body[:2] == b"\x1f\x8b":
            body = _gunzip(body)
        data = json.loads(body)
        events = data["events"]
        if not isinstance(events, list):
            raise TypeError("events must be a list")
        out = []
        for e in events:
            if not isinstance(e, dict):
                raise TypeError("each event must be an object")
            if "json" in e:
                payload = json.dumps(e["json"], separators=(",", ":")).encode()
            else:
                payload = base64.b64decode(e["payload"], validate=True)
            priority, created = e.get("priority", 0), e.get("created", 0.0)
            if isinstance(priority, bool) or not isinstance(priority, int) or not -2**31 <= priority < 2**31:
                raise ValueError("priority must be an integer in the 32-bit range")
            if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created):
                raise ValueError("created must be a finite number")
            out.append(Item(_text(e, "key"), _text(e, "topic"), payload, priority, float(created)))
        return out
    except (ValueError, KeyError, TypeError, OSError, EOFError, OverflowError, RecursionError, zlib.error) as e:
        raise AgentError(f"malformed event batch: {type(e).__name__}: {str(e)[:200]}") from e


def encode_npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class Upstream(ABC):
    @abstractmethod
    def deliver(self, items: Sequence[Item]) -> None:
        """Hand items over; return only once the receiver has stored them (it de-duplicates by key)."""

    @abstractmethod
    def predict(self, model: str, x: np.ndarray, what: str = "inputs") -> dict[str, Any]:
        """Ask the tier above to answer a request this tier is not confident about."""

    def predict_image(self, model: str, jpeg: bytes) -> dict[str, Any]:
        """Ask the tier above about a picture (a crop around an unsure detection), as a JPEG."""
        raise AgentError(f"{type(self).__name__} cannot send pictures upstream")


class HttpUpstream(Upstream):
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _post(self, path: str, body: bytes, ctype: str = "application/json") -> bytes:
        headers = {"Content-Type": ctype}
        if body[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                raise UpstreamUnavailable(f"upstream {self.url} answered {e.code}") from e
            raise AgentError(f"upstream {self.url} refused the request: {e.code} {e.read()[:200]!r}") from e
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            raise UpstreamUnavailable(f"upstream {self.url} unreachable: {getattr(e, 'reason', e)}") from e

    def deliver(self, items: Sequence[Item]) -> None:
        self._post("/v1/events", encode_batch(items))

    def predict(self, model: str, x: np.ndarray, what: str = "inputs") -> dict[str, Any]:
        # Binary .npy (float32): 4 bytes a value where JSON takes ~20, so escalations cost little upstream.
        return json.loads(self._post(f"/predict?model={model}", encode_npy(x), "application/x-npy"))

    def predict_image(self, model: str, jpeg: bytes) -> dict[str, Any]:
        return json.loads(self._post(f"/predict?model={model}", jpeg, "image/jpeg"))


class InProcessUpstream(Upstream):
    """Delivers to a receiver object in this process; `online=False` simulates a dead link."""

    def __init__(self, receiver: Any, predictor: Any = None) -> None:
        self.receiver, self.predictor, self.online = receiver, predictor, True

    def deliver(self, items: Sequence[Item]) -> None:
        if not self.online:
            raise UpstreamUnavailable("in-process upstream is offline")
        self.receiver.store(items)

    def predict(self, model: str, x: np.ndarray, what: str = "inputs") -> dict[str, Any]:
        if not self.online or self.predictor is None:
            raise UpstreamUnavailable("in-process upstream is offline")
        return self.predictor(model, x)
