"""The agent's HTTP face (FastAPI): receive events from the tier below, health and Prometheus metrics.

Thin on purpose: parsing and status codes here, everything else in queue / receiver / sync.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from edgewise.agent.receiver import EventStore
from edgewise.agent.upstream import decode_batch
from edgewise.errors import AgentError, StorageError

MAX_BODY_BYTES = 16 * 2**20


def create_app(events: EventStore | None = None, syncer: Any = None, queue: Any = None, tier: str = "server") -> FastAPI:
    app = FastAPI(title=f"edgewise agent ({tier})", version="0.1.0")
    received = {"batches": 0, "events": 0, "duplicates": 0, "malformed": 0}

    @app.post("/v1/events")
    async def post_events(request: Request) -> JSONResponse:
        """Store a batch from the tier below; 200 only once it is durable. Duplicate keys are ignored."""
        if events is None:
            return JSONResponse({"error": "this tier does not receive events"}, status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"batch over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            items = decode_batch(body)
            new = events.store(items)
        except StorageError as e:
            return JSONResponse({"error": str(e)}, status_code=507)
        except AgentError as e:
            received["malformed"] += 1
            return JSONResponse({"error": str(e)}, status_code=400)
        received["batches"] += 1
        received["events"] += new
        received["duplicates"] += len(items) - new
        return JSONResponse({"stored": new, "duplicates": len(items) - new})

    @app.get("/health")
    def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "tier": tier}
        if syncer is not None:
            out["sync"] = {k: v for k, v in asdict(syncer.stats).items() if k != "errors"}
        if queue is not None:
            out["queue"] = queue.stats()
        return out

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        lines = []
        for k, v in received.items():
            lines += [f"# TYPE edgewise_received_{k}_total counter", f"edgewise_received_{k}_total {v}"]
        if queue is not None:
            for k, v in queue.stats().items():
                kind = "gauge" if k in ("depth", "bytes", "max_bytes") else "counter"
                name = f"edgewise_queue_{k}" + ("_total" if kind == "counter" else "")
                lines += [f"# TYPE {name} {kind}", f"{name} {v}"]
        if syncer is not None:
            s = syncer.stats
            lines += ["# TYPE edgewise_sync_sent_total counter", f"edgewise_sync_sent_total {s.sent}",
                      "# TYPE edgewise_sync_failures_total counter", f"edgewise_sync_failures_total {s.failures}",
                      "# TYPE edgewise_sync_online gauge", f"edgewise_sync_online {int(s.online)}"]
        return "\n".join(lines) + "\n"

    return app
