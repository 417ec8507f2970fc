"""Validate a request's inputs against the bundle's manifest: names, dtypes, shapes, finite values.

A single-input model takes a batch-first array (JSON list or `.npy`), or one sample without the batch
axis. A model with several inputs takes one complete feed by input name: JSON `{"inputs": {name:
array}}` or an `.npz` body. Every refusal names the input and what is wrong.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from edgewise.bundle import Manifest
from edgewise.errors import AgentError, DataError
from edgewise.npyio import HEADER_LOCK

MAX_BATCH = 1024
MAX_NPZ_MEMBERS = 64
MAX_NPZ_BYTES = 64 * 2**20


class BadInput(AgentError):
    """The request's inputs do not fit the model: the service answers 4xx with this message."""


def load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadInput(f"body is not valid JSON ({e.msg} at position {e.pos})") from e
    except UnicodeDecodeError as e:
        raise BadInput(f"body is not UTF-8 ({e.reason} at byte {e.start})") from e
    except ValueError as e:  # e.g. an integer literal past Python's digit limit
        raise BadInput(f"body is not acceptable JSON ({e})") from e
    except RecursionError as e:
        raise BadInput("body is nested too deeply") from e


Inputs = np.ndarray | dict[str, np.ndarray]


def parse_json_inputs(body: Any) -> Inputs:
    """`{"inputs": [...]}` (one input, batch first) or `{"inputs": {name: [...]}}` (by input name)."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise BadInput('body must be a JSON object with "inputs": nested lists in the model\'s input shape, '
                       'or {"inputs": {name: nested lists}} for a model with several inputs')
    value = body["inputs"]
    if isinstance(value, dict):
        return {str(k): _array(str(k), v) for k, v in value.items()}
    try:
        with np.errstate(over="ignore"):  # 1e300 becomes inf here, and the finiteness check refuses it by name
            return np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"inputs must be a rectangular array of numbers ({e})") from e


def _array(name: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"input {name!r} must be a rectangular array of numbers ({e})") from e
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise BadInput(f"input {name!r} must hold numbers or booleans, got {a.dtype}")
    return a


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy header, read before any array is allocated."""
    version = np.lib.format.read_magic(buf)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy version {version}")
    with HEADER_LOCK:
        shape, _fortran, dtype = read(buf)
    return shape, dtype


def parse_npy(raw: bytes) -> np.ndarray:
    try:
        buf = io.BytesIO(raw)
        shape, dtype = _npy_header(buf)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or need > len(raw) - buf.tell():
            raise BadInput(f".npy header declares {list(shape)} {dtype} ({need:,} bytes) but the body holds "
                           f"{len(raw) - buf.tell():,}")
        with HEADER_LOCK:
            x = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInput(f"body is not a valid .npy array ({e})") from e
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
        raise BadInput(f".npy array must be numeric, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.astype(np.float32, copy=False)


def parse_npz(raw: bytes) -> dict[str, np.ndarray]:
    """An .npz body: one array per input name (no pickles, a bounded number of members)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            members = z.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise BadInput(f".npz holds more than {MAX_NPZ_MEMBERS} arrays")
            if sum(m.file_size for m in members) > MAX_NPZ_BYTES:
                raise BadInput(f".npz expands past {MAX_NPZ_BYTES:,} bytes")
        with HEADER_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        return {k: _array(k, v) for k, v in arrays.items()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput(f"body is not a valid .npz archive ({e})") from e


def _cast(name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    want = np.dtype(dtype)
    if a.dtype == want:
        return a
    if want == np.bool_:
        if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
            raise BadInput(f"input {name!r} is boolean: send true/false or 0/1")
        return a.astype(np.bool_)
    if np.issubdtype(want, np.integer):
        if np.issubdtype(a.dtype, np.floating) and (not np.isfinite(a).all() or np.any(np.mod(a, 1))):
            raise BadInput(f"input {name!r} takes {want.name} values; the request holds fractions")
        info = np.iinfo(want)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise BadInput(f"input {name!r} holds values outside {want.name}'s range")
    elif np.issubdtype(want, np.floating) and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise BadInput(f"input {name!r} holds NaN or infinite values")
    return a.astype(want)


def _fits(shape: tuple[int, ...], want: list[Any]) -> bool:
    return len(shape) == len(want) and all(not isinstance(w, int) or w <= 0 or w == h for w, h in zip(want, shape))


def validate(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Batch-first array that matches the single input's spec, or BadInput saying why."""
    spec = manifest.inputs[0]
    want = spec["shape"][1:]
    if x.ndim == len(want):  # a single sample without the batch dimension
        x = x[None]
    if x.ndim != len(want) + 1 or not _fits(x.shape[1:], want):
        raise BadInput(f"inputs have shape {list(x.shape)}; model {manifest.name} expects [batch, "
                       f"{', '.join(str(w) for w in want)}]")
    fixed = spec["shape"][0] if spec["shape"] else None
    if isinstance(fixed, int) and fixed > 0 and x.shape[0] != fixed:
        raise BadInput(f"model {manifest.name} takes batches of exactly {fixed}; got {x.shape[0]}")
    if not 1 <= x.shape[0] <= MAX_BATCH:
        raise BadInput(f"batch must be between 1 and {MAX_BATCH}, got {x.shape[0]}")
    floating = np.issubdtype(x.dtype, np.floating)
    if floating and not np.isfinite(x).all():
        raise BadInput("inputs hold NaN or infinite values")
    bounds = (manifest.preprocessing or {}).get("input_range")
    if bounds is not None and floating:
        lo, hi = float(x.min()), float(x.max())
        if lo < bounds[0] or hi > bounds[1]:
            raise BadInput(f"inputs span [{lo:.4g}, {hi:.4g}], outside the model's input range "
                           f"[{bounds[0]:.4g}, {bounds[1]:.4g}]: check the preprocessing ({_brief(manifest.preprocessing)})")
    return np.ascontiguousarray(_cast(spec["name"], x, spec.get("dtype", "float32")))


def _brief(preprocessing: dict[str, Any] | None, most: int = 160) -> str:
    """What the bundle declares about its input, short enough for an error message."""
    items = {k: v for k, v in (preprocessing or {}).items()
             if k not in ("input_range", "feature_names", "test_groups", "source")}
    text = ", ".join(f"{k}: {v}" if not isinstance(v, (dict, list)) or len(str(v)) < 40 else f"{k}: ..."
                     for k, v in items.items())
    return text if len(text) <= most else text[: most - 3] + "..."


def feed_for(inputs: Inputs, manifest: Manifest) -> dict[str, np.ndarray]:
    """The validated feed for the bundle's model: every input by name, each cast to its dtype."""
    specs = manifest.inputs
    if isinstance(inputs, np.ndarray):
        if len(specs) != 1:
            names = ", ".join(f"{s['name']}{s['shape']}" for s in specs)
            raise BadInput(f"model {manifest.name} has {len(specs)} inputs ({names}): send "
                           '{"inputs": {name: array}} or an .npz with one array per input name')
        return {specs[0]["name"]: validate(inputs, manifest)}
    if len(specs) == 1 and list(inputs) == [specs[0]["name"]]:
        return {specs[0]["name"]: validate(inputs[specs[0]["name"]], manifest)}
    want = {s["name"] for s in specs}
    missing, extra = sorted(want - set(inputs)), sorted(set(inputs) - want)
    if missing:
        raise BadInput(f"missing input(s) {', '.join(missing)}; model {manifest.name} takes "
                       + ", ".join(f"{s['name']} {s.get('dtype', 'float32')}{s['shape']}" for s in specs))
    if extra:
        raise BadInput(f"model {manifest.name} has no input(s) named {', '.join(extra)}")
    feed = {}
    for s in specs:
        a = inputs[s["name"]]
        if not _fits(a.shape, s["shape"]):
            raise BadInput(f"input {s['name']!r} has shape {list(a.shape)}; the model expects {s['shape']}")
        if a.size > MAX_BATCH * 2**16:
            raise BadInput(f"input {s['name']!r} is too large ({a.size:,} values)")
        feed[s["name"]] = np.ascontiguousarray(_cast(s["name"], a, s.get("dtype", "float32")))
    return feed


def outputs_json(names: list[str], outs: list[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Every output by name, with its dtype and shape beside the values."""
    return {n: {"dtype": o.dtype.name, "shape": list(o.shape), "data": o.tolist()} for n, o in zip(names, outs)}


def readings_json(value: Any) -> np.ndarray:
    """`{"readings": [[ch0, ch1, ...], ...]}`: one row per sample, the channels in the manifest's order."""
    try:
        x = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"readings must be rows of numbers, one row per sample ({e})") from e
    if x.ndim != 2:
        raise BadInput(f"readings must be rows of numbers, one row per sample; got shape {tuple(x.shape)}")
    return x


def readings_csv(raw: bytes, manifest: Manifest) -> np.ndarray:
    """A CSV body of readings, its channels found by the names the bundle's sensor front end records."""
    from edgewise.media.sensor import SensorInput, parse_readings

    try:
        sensor = SensorInput.from_preprocessing(manifest.preprocessing or {})
        if sensor is None:
            raise BadInput(f"model {manifest.name} declares no sensor front end: a CSV of readings needs one")
        return parse_readings(raw.decode("utf-8-sig"), sensor.channels)
    except UnicodeDecodeError as e:
        raise BadInput(f"the CSV body is not UTF-8 ({e.reason})") from e
    except DataError as e:
        raise BadInput(str(e)) from e
