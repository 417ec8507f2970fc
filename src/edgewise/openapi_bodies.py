"""Request bodies of the agent's and the fleet's HTTP APIs, described for OpenAPI.

The handlers read raw bodies (so that every refusal is theirs to word), which leaves FastAPI's generated
schema silent about them; these descriptions fill it in, for `/docs` and for fuzzing the APIs against it
(tests run schemathesis over both services).
"""

from __future__ import annotations

from typing import Any

_NUMBERS = {"type": "array", "items": {}}  # nested lists of numbers, any depth


def body(schema: dict[str, Any], *others: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    content.update({ctype: {"schema": s} for ctype, s in others})
    return {"requestBody": {"required": True, "content": content}}


BINARY = {"type": "string", "format": "binary"}

PREDICT = body({"type": "object", "required": ["inputs"],
                "properties": {"inputs": {"oneOf": [_NUMBERS, {"type": "object",
                                                               "additionalProperties": _NUMBERS}]}}},
               ("application/x-npy", BINARY), ("application/x-npz", BINARY), ("image/jpeg", BINARY),
               ("image/png", BINARY), ("audio/wav", BINARY), ("audio/pcm", BINARY), ("audio/L16", BINARY),
               ("text/csv", {"type": "string"}))
BENCH_MODEL = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": BINARY}}}}
# the feed, an .npz archive (one array per input name); any content type is read as one
BENCH_RUN = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": BINARY}}}}
READINGS = body({"type": "object", "required": ["readings"],
                 "properties": {"readings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                                "seq": {"type": "integer", "minimum": 0}, "t0": {"type": "number"}}},
                ("text/csv", {"type": "string"}))
SAMPLES = body({"type": "object", "required": ["inputs", "labels"],
                "properties": {"inputs": _NUMBERS, "labels": {"type": "array", "items": {"type": "integer"}}}})
EVENTS = body({"type": "object", "required": ["events"], "properties": {"events": {"type": "array", "items": {
    "type": "object", "required": ["key", "topic"],
    "properties": {"key": {"type": "string"}, "topic": {"type": "string"}, "json": {},
                   "payload": {"type": "string", "description": "base64"}, "priority": {"type": "integer"},
                   "created": {"type": "number"}}}}}})
ENROLL_TOKENS = body({"type": "object", "properties": {
    "tags": {"type": "array", "items": {"type": "string"}}, "ttl_s": {"type": "number"},
    "count": {"type": "integer"}}})
TAGS = body({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}})
ROLLOUT = body({"type": "object", "required": ["model", "version"], "properties": {
    "model": {"type": "string"}, "version": {"type": "string"}, "selector": {"type": "string"},
    "waves": {"type": "array", "items": {"type": "number"}}, "auto_rollback": {"type": "boolean"},
    "gate": {"type": "object", "properties": {
        "max_failure_rate": {"type": "number"}, "max_error_rate": {"type": "number"},
        "max_latency_ms": {"type": ["number", "null"]}, "wave_timeout_s": {"type": "number"}}}}})
ENROLL = body({"type": "object", "required": ["token"],
               "properties": {"token": {"type": "string"}, "name": {"type": "string"}}})
REPORT = body({"type": "object", "properties": {
    "step": {"type": "string"}, "ok": {"type": "boolean"}, "serial": {"type": "integer"},
    "version": {"type": "string"}, "detail": {"type": "string"}, "error_rate": {"type": "number"},
    "latency_ms": {"type": "number"}, "model": {"type": "string"}, "active_version": {"type": "string"}}})
# a bundle archive (tar or tar.gz); any byte stream is read as one
UPLOAD = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": BINARY}}}}
