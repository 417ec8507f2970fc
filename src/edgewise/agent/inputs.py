"""Validate a request's inputs against the bundle's manifest: dtype, shape (batch first), finite values."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from edgewise.bundle import Manifest
from edgewise.errors import AgentError

MAX_BATCH = 1024


class BadInput(AgentError):
    """The request's inputs do not fit the model: the service answers 4xx with this message."""


def load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadInput(f"body is not valid JSON ({e.msg} at position {e.pos})") from e


def parse_json_inputs(body: Any) -> np.ndarray:
    if not isinstance(body, dict) or "inputs" not in body:
        raise BadInput('body must be a JSON object with "inputs": nested lists in the model\'s input shape')
    try:
        x = np.asarray(body["inputs"], dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise BadInput(f"inputs must be a rectangular array of numbers ({e})") from e
    return x


def parse_npy(raw: bytes) -> np.ndarray:
    try:
        x = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInput(f"body is not a valid .npy array ({e})") from e
    if not np.issubdtype(x.dtype, np.number):
        raise BadInput(f".npy array must be numeric, got {x.dtype}")
    return x.astype(np.float32, copy=False)


def validate(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Batch-first array that matches the manifest's input spec exactly, or BadInput saying why."""
    spec = manifest.inputs[0]
    want = spec["shape"][1:]
    if x.ndim == len(want):  # a single sample without the batch dimension
        x = x[None]
    if x.ndim != len(want) + 1 or any(isinstance(w, int) and w != h for w, h in zip(want, x.shape[1:])):
        raise BadInput(f"inputs have shape {list(x.shape)}; model {manifest.name} expects [batch, "
                       f"{', '.join(str(w) for w in want)}]")
    if not 1 <= x.shape[0] <= MAX_BATCH:
        raise BadInput(f"batch must be between 1 and {MAX_BATCH}, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise BadInput("inputs hold NaN or infinite values")
    bounds = (manifest.preprocessing or {}).get("input_range")
    if bounds is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < bounds[0] or hi > bounds[1]:
            raise BadInput(f"inputs span [{lo:.4g}, {hi:.4g}], outside the model's input range "
                           f"[{bounds[0]:.4g}, {bounds[1]:.4g}]: check the preprocessing ({manifest.preprocessing})")
    if spec.get("dtype", "float32") != "float32":
        raise BadInput(f"model input dtype {spec['dtype']} is not supported by the agent yet")
    return np.ascontiguousarray(x, dtype=np.float32)
