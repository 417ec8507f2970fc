"""Per-client rate limits (token buckets) and request size caps, as ASGI middleware for the agent and the
fleet server alike.

The body is read here, up to the cap, before the application sees any of it: a body over the cap (declared
or chunked) is answered 413 and never buffered whole, and the application never fails half-way through.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Limit:
    rate: float  # requests per second, sustained
    burst: float  # bucket size
    max_body: int  # bytes


class Limiter:
    """Buckets keyed by client and the limit class of the path.

    A client is the identity `identify(authorization header)` vouches for (a verified credential, checked
    once and remembered), else its address: a made-up header per request lands in its address's bucket,
    not in a fresh one. Idle buckets (refilled to full) are dropped once there are MAX_BUCKETS, so a stream
    of new clients cannot grow the server without bound.
    """

    MAX_BUCKETS = 10_000
    MAX_IDENTITIES = 50_000

    def __init__(self, limits: dict[str, Limit], classify: Any,
                 identify: Callable[[str], str | None] = lambda _h: None) -> None:
        self.limits, self.classify, self.identify = limits, classify, identify
        self._identities: OrderedDict[str, str | None] = OrderedDict()
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
            if len(self._buckets) >= self.MAX_BUCKETS and (cls, client) not in self._buckets:
                self._sweep(now)
            tokens, last = self._buckets.get((cls, client), (lim.burst, now))
            tokens = min(lim.burst, tokens + (now - last) * lim.rate)
            if tokens < 1:
                self._buckets[(cls, client)] = (tokens, now)
                return False
            self._buckets[(cls, client)] = (tokens - 1, now)
            return True

    def client(self, scope: dict) -> str:
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode(errors="replace")
        who = None
        if auth:
            with self._lock:
                known = self._identities.get(auth, "")
            if known == "":
                known = self.identify(auth)
                with self._lock:
                    self._identities[auth] = known
                    if len(self._identities) > self.MAX_IDENTITIES:
                        self._identities.popitem(last=False)
            who = known
        return f"id:{who}" if who else f"ip:{(scope.get('client') or ('?',))[0]}"

    def _sweep(self, now: float) -> None:
        """Drop the buckets whose clients have been away long enough to be full again."""
        for key, (tokens, last) in list(self._buckets.items()):
            lim = self.limits[key[0]]
            if tokens + (now - last) * lim.rate >= lim.burst:
                del self._buckets[key]

    def middleware(self, app: Any) -> Any:
        async def wrapped(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            cls = self.classify(scope["path"])
            if not self.allow(cls, self.client(scope)):
                self.refused["rate"] += 1
                return await _reply(send, 429, "rate limit exceeded; slow down", {"retry-after": "1"})
            t0 = time.perf_counter()
            if await capped_body(scope, receive, send, app, self.limits[cls].max_body):
                self.timings.setdefault(cls, deque(maxlen=20000)).append(time.perf_counter() - t0)
            else:
                self.refused["size"] += 1

        return wrapped


async def capped_body(scope: dict, receive: Any, send: Any, app: Any, limit: int) -> bool:
    """Read the request body up to `limit` bytes, then run `app` on it; over the limit (by Content-Length
    or as it arrives) answer 413 without running `app`. Returns whether `app` ran."""
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        await _reply(send, 413, f"request body over {limit:,} bytes")
        return False
    chunks, seen = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return False
        if msg["type"] == "http.request":
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _reply(send, 413, f"request body over {limit:,} bytes")
                return False
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
    body = b"".join(chunks)
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    await app(scope, replay, send)
    return True


class BodyCap:
    """ASGI middleware: every request body at most `limit` bytes (413 otherwise, never buffered whole);
    `routes` gives some paths a cap of their own."""

    def __init__(self, app: Any, limit: int, routes: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.routes = app, limit, dict(routes or {})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        await capped_body(scope, receive, send, self.app, self.routes.get(scope.get("path", ""), self.limit))


async def _reply(send: Any, status: int, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


IDLE_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 10.0  # from the first byte (or the last response) to a request's complete headers


def serve_http(app: Any, host: str, port: int, max_connections: int = 4096, idle_timeout_s: float = IDLE_TIMEOUT_S,
               header_timeout_s: float = HEADER_TIMEOUT_S, sock: Any = None) -> None:
    """Run an ASGI app with uvicorn, hardened against idle and excess connections.

    uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that never
    sends a request at all is kept forever: 1,030 of them took every file descriptor and /health failed.
    Here a new connection gets the same timer until its request starts; the descriptor limit is raised to
    the hard limit; beyond `max_connections` new requests get a 503 instead of nothing.

    `sock`: a listening socket to serve on instead of binding host:port (the workers of a pre-forked server
    share one).
    """
    import logging
    import resource

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11(H11Protocol):  # type: ignore[misc]
        """Idle connections get uvicorn's keep-alive timer from the start; a request's headers must be
        complete within `header_timeout_s` of the connection (or of its last response), so a client that
        trickles header bytes (slowloris) cannot hold a connection either."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)
            self._cycle_at_arm = self.cycle

        def _headers_too_slow(self) -> None:
            if self.cycle is self._cycle_at_arm and not self.transport.is_closing():
                self.transport.close()  # no new request began in time

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._cycle_at_arm:  # headers complete: a request is running
                self._header_timer.cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    if not logging.getLogger().handlers:  # a service logs one line per event, with its level, to stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = min(max_connections, max(64, int(soft) - 128))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=TimedH11,
                            timeout_keep_alive=max(1, round(idle_timeout_s)), limit_concurrency=limit,
                            h11_max_incomplete_event_size=64 * 1024)
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
