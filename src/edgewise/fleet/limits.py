"""Per-client rate limits (token buckets) and request size caps, as one ASGI middleware."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class Limit:
    rate: float  # requests per second, sustained
    burst: float  # bucket size
    max_body: int  # bytes


class Limiter:
    """Buckets keyed by client (its credential, else its address) and the limit class of the path."""

    def __init__(self, limits: dict[str, Limit], classify: Any) -> None:
        self.limits, self.classify = limits, classify
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.refused = {"rate": 0, "size": 0}
        self.timings: dict[str, deque[float]] = {}  # seconds per request, last 20,000 per class

    def latency(self) -> dict[str, dict[str, float]]:
        """p50/p99 milliseconds per limit class, as the server saw them (request in to response out)."""
        out = {}
        for cls, t in list(self.timings.items()):
            v = sorted(t)
            if v:
                out[cls] = {"n": len(v), "p50_ms": v[len(v) // 2] * 1e3, "p99_ms": v[int(len(v) * 0.99)] * 1e3}
        return out

    def allow(self, cls: str, client: str) -> bool:
        lim = self.limits[cls]
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get((cls, client), (lim.burst, now))
            tokens = min(lim.burst, tokens + (now - last) * lim.rate)
            if tokens < 1:
                self._buckets[(cls, client)] = (tokens, now)
                return False
            self._buckets[(cls, client)] = (tokens - 1, now)
            return True

    def middleware(self, app: Any) -> Any:
        async def wrapped(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            cls = self.classify(scope["path"])
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode(errors="replace")
            client = auth.split(".")[0] if auth else (scope.get("client") or ("?",))[0]
            if not self.allow(cls, client):
                self.refused["rate"] += 1
                return await _reply(send, 429, "rate limit exceeded; slow down", {"retry-after": "1"})
            limit = self.limits[cls].max_body
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                self.refused["size"] += 1
                return await _reply(send, 413, f"request body over {limit:,} bytes")
            seen = 0

            async def capped() -> dict:
                nonlocal seen
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > limit:
                        raise _TooBig()
                return msg

            t0 = time.perf_counter()
            try:
                await app(scope, capped, send)
                self.timings.setdefault(cls, deque(maxlen=20000)).append(time.perf_counter() - t0)
            except _TooBig:
                self.refused["size"] += 1
                await _reply(send, 413, f"request body over {limit:,} bytes")

        return wrapped


class _TooBig(Exception):
    pass


async def _reply(send: Any, status: int, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
