"""The agent's HTTP face (FastAPI): receive events from the tier below, health and Prometheus metrics.

Thin on purpose: parsing and status codes here, everything else in queue / receiver / sync.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from edgewise import openapi_bodies as bodies
from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.serve.benchsvc import BenchError, machine as bench_machine
from edgewise.agent.forward.upstream import decode_batch
from edgewise.agent.serve.inputs import (
    readings_csv,
    readings_json,
    BadInput,
    feed_for,
    load_json,
    parse_json_inputs,
    parse_npy,
    parse_npz,
    validate,
)
from edgewise.agent.serve.models import ModelBudgetExceeded
from edgewise.errors import AgentError, DataError, QueueFull, StorageError
from edgewise.httplimits import BodyCap
from edgewise.media.audio import PCM_TYPES, read_pcm

MAX_BODY_BYTES = 16 * 2**20
MAX_BENCH_UPLOAD_BYTES = 1 * 2**30  # a candidate model uploaded for measuring (`agent --allow-bench`)


AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")


def _content_type(header: str) -> tuple[str, dict[str, str]]:
    """`type/sub; rate=16000; channels=1` -> ("type/sub", {"rate": "16000", "channels": "1"})."""
    kind, *parts = header.split(";")
    params = {}
    for part in parts:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip(), params


def create_app(events: EventStore | None = None, syncer: Any = None, queue: Any = None, tier: str = "server",
               inference: Any = None, mqtt: Any = None, ota: Any = None, samples: Any = None,
               streams: list[Any] | None = None, bench: Any = None) -> FastAPI:
    app = FastAPI(title=f"edgewise agent ({tier})", version="0.1.0")
    # Bodies are read up to the cap before any handler runs: a larger one (declared or chunked) is a 413.
    # With --allow-bench, a candidate model and its OpenVINO IR may be larger (a device on the bench).
    big = {path: MAX_BENCH_UPLOAD_BYTES for path in ("/v1/bench/models", "/v1/bench/ir")} if bench is not None else {}
    app.add_middleware(BodyCap, limit=MAX_BODY_BYTES, routes=big)
    received = {"batches": 0, "events": 0, "duplicates": 0, "malformed": 0}
    errors = {"bad_input": 0, "unknown_model": 0, "overloaded": 0, "storage": 0, "model_unavailable": 0}

    def failed(kind: str, status: int, e: Exception) -> JSONResponse:
        errors[kind] += 1
        return JSONResponse({"error": str(e)}, status_code=status)

    def lookup(name: str) -> tuple[Any, JSONResponse | None]:
        """The served model's manifest, or the 404 that says it is not served."""
        try:
            return inference.models.manifest(name), None
        except AgentError as e:
            return None, failed("unknown_model", 404, e)

    @app.post("/predict", response_model=None, openapi_extra=bodies.PREDICT)
    async def predict(request: Request, model: str | None = None) -> Response:
        """Run a model. One input: JSON `{"inputs": [...]}` (batch first) or a binary `.npy` body
        (Content-Type: application/x-npy). Several inputs: JSON `{"inputs": {name: [...]}}` or an `.npz`
        body (application/x-npz). The answer holds every output by name (dtype, shape, data; as an .npz
        with `Accept: application/x-npz`); classifiers add `results` (label, score), and their
        low-confidence samples go to the tier above when the privacy policy allows. A JPEG or PNG body
        (image/jpeg, image/png) goes through the bundle's declared preprocessing and answers `boxes`
        (label, score, box in the image's pixels) or `label`, `score` and `top`. A WAV body (audio/wav), or
        raw 16-bit PCM (`audio/pcm; rate=16000` little-endian, `audio/L16; rate=16000` big-endian), goes
        through the bundle's audio front end (resample, window, log-mel/MFCC) and answers `label`, `score`
        and `top` (a clip) or the keywords heard (a longer recording). Sensor readings (a text/csv body
        with the channels named in its header, or JSON `{"readings": [[...], ...]}`, one row per sample)
        go through the bundle's spectral front end and answer per window: `anomaly` and `score` for an
        anomaly detector, `label` and `score` for a classifier."""
        if inference is None:
            return JSONResponse({"error": "this agent serves no models"}, status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request over {MAX_BODY_BYTES} bytes"}, status_code=413)
        names = inference.models.names
        name = model or (names[0] if len(names) == 1 else None)
        if name is None:
            return JSONResponse({"error": f"several models are served; pass ?model= one of {names}"}, status_code=400)
        ctype, params = _content_type(request.headers.get("content-type", "application/json"))
        manifest, refused = lookup(name)
        if refused is not None:
            return refused
        try:
            if ctype in ("image/jpeg", "image/png"):  # decoded and prepared as the bundle declares
                answer = await run_in_threadpool(inference.answer_image, name, body)
            elif ctype in AUDIO_TYPES:  # resampled and turned into features by the bundle's front end
                answer = await run_in_threadpool(inference.answer_audio, name, body)
            elif ctype in ("text/csv", "text/plain"):  # sensor readings as logged: the bundle's spectral front end
                answer = await run_in_threadpool(inference.answer_readings, name, readings_csv(body, manifest))
            elif ctype.lower() in PCM_TYPES:  # raw 16-bit PCM: the rate (and channels) from the type's parameters
                answer = await run_in_threadpool(inference.answer_audio, name, body,
                                                 lambda raw: read_pcm(raw, ctype, params))
            else:
                if ctype == "application/x-npy":
                    inputs = parse_npy(body)
                elif ctype in ("application/x-npz", "application/zip"):
                    inputs = parse_npz(body)
                elif ctype in ("application/json", ""):
                    doc = load_json(body)
                    if isinstance(doc, dict) and "readings" in doc:  # sensor readings, rows of channels
                        inputs = None
                        answer = await run_in_threadpool(inference.answer_readings, name,
                                                         readings_json(doc["readings"]))
                    else:
                        inputs = parse_json_inputs(doc)
                else:
                    return JSONResponse({"error": f"unsupported content type {ctype!r}: use application/json, "
                                                  "application/x-npy, application/x-npz, image/jpeg, image/png, "
                                                  "audio/wav, audio/pcm;rate=N or text/csv"},
                                        status_code=415)
                if inputs is not None:
                    answer = await run_in_threadpool(inference.answer, name, feed_for(inputs, manifest))
        except BadInput as e:
            return failed("bad_input", 422, e)
        except (ModelBudgetExceeded, QueueFull) as e:
            return failed("overloaded", 503, e)
        except StorageError as e:
            return failed("storage", 507, e)
        except AgentError as e:  # the model cannot be loaded or run (a changed file, a broken build)
            return failed("model_unavailable", 503, e)
        if "outputs" in answer and "application/x-npz" in request.headers.get("accept", ""):
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in answer["outputs"].items()})
            return Response(buf.getvalue(), media_type="application/x-npz",
                            headers={"X-Edgewise-Model": name, "X-Edgewise-Version": manifest.version})
        return JSONResponse({**answer, "tier": answer.get("tier", tier), "model": name, "version": manifest.version})

    @app.post("/v1/events", openapi_extra=bodies.EVENTS)
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

    @app.post("/v1/samples", openapi_extra=bodies.SAMPLES)
    async def post_samples(request: Request, model: str | None = None) -> JSONResponse:
        """Keep labelled samples on this device for federated training: JSON `{"inputs": [...], "labels":
        [...]}`. They stay here; `edgewise federate join` trains on them and sends only weights."""
        if samples is None:
            return JSONResponse({"error": "this agent keeps no samples (samples_max_mb = 0)"}, status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request over {MAX_BODY_BYTES} bytes"}, status_code=413)
        served = inference.models.names if inference is not None else []
        name = model or (served[0] if len(served) == 1 else None)
        if name is None:
            return JSONResponse({"error": "pass ?model= the model these samples train"}, status_code=400)
        if name not in served:  # samples for a model nobody serves would only take others' room
            return failed("unknown_model", 404, AgentError(f"unknown model {name!r}; serving: {', '.join(served)}"))
        try:
            doc = load_json(body)
            x = parse_json_inputs(doc)
            if isinstance(x, dict):
                raise BadInput("labelled samples are kept for single-input models: send \"inputs\" as one array")
            labels = doc.get("labels")
            if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise BadInput('"labels" must be a list of class indices, one per input')
            manifest = inference.models.manifest(name)
            x = validate(x, manifest)
            bad = next((v for v in labels if not 0 <= v < len(manifest.labels)), None)
            if bad is not None:
                raise BadInput(f"label {bad} out of range: {name} has {len(manifest.labels)} classes")
            total = await run_in_threadpool(samples.add, name, x, np.asarray(labels, dtype=np.int64))
        except (BadInput, DataError) as e:
            return failed("bad_input", 422, e)
        except StorageError as e:
            return failed("storage", 507, e)
        return JSONResponse({"stored": len(labels), "model": name, "total": total})

    def bench_off() -> JSONResponse:
        return JSONResponse({"error": "measuring uploaded models is off on this agent (start it with "
                                      "--allow-bench, on a device on your bench)"}, status_code=404)

    async def bench_keep(request: Request, method: str, field: str) -> JSONResponse:
        """An upload the bench keeps (`bench.<method>` of the body), answered as {field: what it returns} and
        how many models it keeps at once (`keeps`: a longer run must be measured in groups)."""
        if bench is None:
            return bench_off()
        try:
            kept = await run_in_threadpool(getattr(bench, method), await request.body())
            return JSONResponse({field: kept, "keeps": bench.max_models})
        except BenchError as e:
            return failed("bad_input", 422, e)

    def provider_list(providers: str) -> tuple[str, ...]:
        return tuple(p for p in providers.split(",") if p)

    @app.post("/v1/bench/models", openapi_extra=bodies.BENCH_MODEL)
    async def bench_upload(request: Request) -> JSONResponse:
        """A candidate model (ONNX bytes) for `POST /v1/bench/run`; its id is its content hash."""
        return await bench_keep(request, "add", "id")

    @app.post("/v1/bench/ir", openapi_extra=bodies.BENCH_RUN)
    async def bench_ir(request: Request) -> JSONResponse:
        """The OpenVINO IR a candidate names (.npz of `xml` and `bin` bytes), before the candidate itself."""
        return await bench_keep(request, "add_ir", "key")

    @app.post("/v1/bench/run", openapi_extra=bodies.BENCH_RUN)
    async def bench_run(request: Request, models: str, runs: int = 200, warmup: int = 20, threads: int = 1,
                        providers: str = "CPUExecutionProvider") -> JSONResponse:
        """Batch-1 latency of uploaded models (comma-separated ids), in turns; the body is the feed (.npz)."""
        if bench is None:
            return bench_off()
        try:
            feed = parse_npz(await request.body())
            out = await run_in_threadpool(bench.run, [m for m in models.split(",") if m], feed, runs, warmup,
                                          threads, provider_list(providers))
        except (BadInput, BenchError, DataError) as e:
            return failed("bad_input", 422, e)
        return JSONResponse(out)

    @app.post("/v1/bench/memory", openapi_extra=bodies.BENCH_RUN)
    async def bench_memory(request: Request, model: str, threads: int = 1) -> JSONResponse:
        """Peak memory of loading and running an uploaded model once in a fresh process here (the body is
        the feed, .npz): `rss_delta_bytes`, `load_delta_bytes`, `running_on`."""
        if bench is None:
            return bench_off()
        try:
            feed = parse_npz(await request.body())
            return JSONResponse(await run_in_threadpool(bench.memory, model, feed, threads))
        except (BadInput, BenchError, DataError) as e:
            return failed("bad_input", 422, e)

    @app.post("/v1/bench/infer", response_model=None, openapi_extra=bodies.BENCH_RUN)
    async def bench_infer(request: Request, model: str, threads: int = 1,
                          providers: str = "CPUExecutionProvider") -> Response:
        """An uploaded model's outputs for a batch (.npz in, .npz out: out0, out1, ...), computed here."""
        if bench is None:
            return bench_off()
        try:
            feed = parse_npz(await request.body())
            outs, where = await run_in_threadpool(bench.infer, model, feed, threads, provider_list(providers))
        except (BadInput, BenchError, DataError) as e:
            return failed("bad_input", 422, e)
        buf = io.BytesIO()
        np.savez(buf, **{f"out{i}": o for i, o in enumerate(outs)})
        return Response(buf.getvalue(), media_type="application/x-npz", headers={"X-Running-On": where})

    @app.get("/health")
    def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "tier": tier}
        if syncer is not None:
            out["sync"] = {**asdict(syncer.stats), "running": syncer.alive}
            if not syncer.alive:
                out["status"] = "error: the sync thread is not running; results queue but are not sent"
            elif syncer.stats.failing in ("storage", "unexpected"):
                out["status"] = f"degraded: results are not being sent ({syncer.stats.last_error})"
        if queue is not None:
            out["queue"] = queue.stats()
        if inference is not None:
            out["models"] = inference.models.health()
            out["cascade"] = inference.counts
        if mqtt is not None:
            out["mqtt"] = {**mqtt.counts, "connected": mqtt.client.is_connected()}
        if inference is not None and inference.sensors.counts["chunks"]:
            out["sensor_streams"] = inference.sensors.health()
        if ota is not None:
            out["ota"] = ota.status()
        if samples is not None:
            out["samples"] = samples.counts()
        if streams:
            out["streams"] = {s.name: s.stats.as_dict() for s in streams}
        if bench is not None:  # the machine too: the build host builds for its CPU (int8 weights' bits)
            out["bench"] = {**bench.counts, "machine": bench_machine()}
        return out

    @app.post("/v1/readings/{model}/{device}", response_model=None, openapi_extra=bodies.READINGS)
    async def post_readings(model: str, device: str, request: Request, seq: int | None = None,
                            t0: float | None = None) -> JSONResponse:
        """A chunk of a device's sensor stream: JSON `{"readings": [[...], ...], "seq": N, "t0": T}` (rows of
        channels in the bundle's order) or a text/csv body (`?seq=&t0=` in the query). The device's ring
        advances; the answer holds each window the chunk completed, stamped with the time it ends."""
        if inference is None:
            return JSONResponse({"error": "this agent serves no models"}, status_code=404)
        body = await request.body()
        ctype, _ = _content_type(request.headers.get("content-type", "application/json"))
        manifest, refused = lookup(model)
        if refused is not None:
            return refused
        try:
            if ctype in ("text/csv", "text/plain"):
                rows = readings_csv(body, manifest)
            else:
                doc = load_json(body)
                if not isinstance(doc, dict) or "readings" not in doc:
                    raise BadInput('body must be {"readings": [[...], ...]} (rows of channels), "seq" and "t0" '
                                   "optional")
                rows = readings_json(doc["readings"])
                seq = doc.get("seq", seq)
                t0 = doc.get("t0", t0)
            out = await run_in_threadpool(inference.sensors.push, model, device, rows,
                                          None if seq is None else int(seq), None if t0 is None else float(t0))
        except (TypeError, ValueError) as e:
            return failed("bad_input", 422, BadInput(f"seq must be an integer and t0 a number ({e})"))
        except BadInput as e:
            return failed("bad_input", 422, e)
        except StorageError as e:
            return failed("storage", 507, e)
        except AgentError as e:
            return failed("model_unavailable", 503, e)
        return JSONResponse({**out, "version": manifest.version})

    @app.get("/v1/streams")
    def stream_answers() -> dict[str, Any]:
        """Each video stream's figures and its last answers (boxes or labels; frames never leave)."""
        return {s.name: {**s.stats.as_dict(), "source": s.source, "model": s.model, "recent": list(s.recent)}
                for s in streams or []}

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
        if inference is not None:
            for k, v in inference.counts.items():
                lines += [f"# TYPE edgewise_predict_{k}_total counter", f"edgewise_predict_{k}_total {v}"]
            lines += ["# TYPE edgewise_models_memory_bytes gauge",
                      f"edgewise_models_memory_bytes {inference.models.used_bytes()}"]
        for k, v in errors.items():
            lines += [f"# TYPE edgewise_errors_{k}_total counter", f"edgewise_errors_{k}_total {v}"]
        if mqtt is not None:
            for k, v in mqtt.counts.items():
                lines += [f"# TYPE edgewise_mqtt_{k}_total counter", f"edgewise_mqtt_{k}_total {v}"]
        for s in streams or []:
            st = s.stats.as_dict()
            for k in ("frames_read", "frames_sampled", "frames_dropped", "inferences", "reconnects", "errors"):
                lines += [f"# TYPE edgewise_stream_{k}_total counter",
                          f'edgewise_stream_{k}_total{{stream="{s.name}"}} {st[k]}']
            lines += ["# TYPE edgewise_stream_fps gauge", f'edgewise_stream_fps{{stream="{s.name}"}} {st["fps"]:.3f}']
            if st["latency_p50_ms"] is not None:
                lines += ["# TYPE edgewise_stream_latency_ms gauge",
                          f'edgewise_stream_latency_ms{{stream="{s.name}",quantile="0.5"}} {st["latency_p50_ms"]:.2f}',
                          f'edgewise_stream_latency_ms{{stream="{s.name}",quantile="0.99"}} {st["latency_p99_ms"]:.2f}']
        return "\n".join(lines) + "\n"

    return app
