"""How a dataset becomes a model's feeds, for any number of inputs of any dtype.

Single-input data (`x`) runs in batches along the model's batch axis (of the size the model fixes, if
it fixes one). Named data runs one complete feed per sample. Either way, outputs come back sample-major:
output k of sample i is `outs[k][i]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgewise.data import Dataset
from edgewise.errors import DataError, ModelError

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # str/None: a symbolic or unknown dimension

    @property
    def fixed_batch(self) -> int | None:
        d = self.shape[0] if self.shape else None
        return d if isinstance(d, int) and d > 0 else None

    def fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            not (isinstance(w, int) and w > 0) or w == h for w, h in zip(self.shape, shape))


def session_inputs(sess: Any) -> list[InputSpec]:
    """The inputs of an ONNX Runtime session (or the C runtime's session, which mimics one)."""
    out = []
    for i in sess.get_inputs():
        if i.type not in _ORT_DTYPES:
            raise ModelError(f"input {i.name!r} has type {i.type}, which edgewise cannot feed yet")
        out.append(InputSpec(i.name, np.dtype(_ORT_DTYPES[i.type]), tuple(i.shape)))
    return out


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    init = {i.name for i in model.graph.initializer}
    specs = []
    for v in model.graph.input:
        if v.name in init:
            continue
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(InputSpec(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return specs


def _cast(name: str, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if np.issubdtype(dtype, np.integer) and np.issubdtype(a.dtype, np.floating) and np.any(np.mod(a, 1)):
        raise DataError(f"input {name!r} takes {dtype.name} values but the data holds fractions")
    return a.astype(dtype)


class Feeder:
    """Feeds for one model from one dataset; checks names, ranks and fixed dimensions up front."""

    def __init__(self, specs: list[InputSpec], data: Dataset | np.ndarray) -> None:
        self.specs = specs
        if isinstance(data, np.ndarray):
            self.named: dict[str, np.ndarray] = {}
            self.x = data
        else:
            self.named, self.x = data.named, data.x
        if not specs:
            raise ModelError("the model has no inputs")
        if self.named:
            self._check_named()
        elif len(specs) != 1:
            names = ", ".join(f"{s.name}{list(s.shape)}" for s in specs)
            raise DataError(f"the model has {len(specs)} inputs ({names}); give an .npz with one array per input "
                            "name, samples stacked on a new leading axis")
        else:
            spec = specs[0]
            want, have = spec.shape[1:], self.x.shape[1:]
            if not spec.shape or not InputSpec(spec.name, spec.dtype, want).fits(have):
                raise DataError(f"data samples have shape {tuple(have)} but the model expects "
                                f"{tuple(w if isinstance(w, int) and w > 0 else '?' for w in want)}")

    def _check_named(self) -> None:
        want = {s.name for s in self.specs}
        missing, extra = sorted(want - set(self.named)), sorted(set(self.named) - want)
        if missing or extra:
            expect = ", ".join(f"{s.name}{list(s.shape)} {s.dtype.name}" for s in self.specs)
            raise DataError("data arrays do not match the model's inputs"
                            + (f": missing {', '.join(missing)}" if missing else "")
                            + (f"; not inputs: {', '.join(extra)}" if extra else "") + f" (model: {expect})")
        for s in self.specs:
            have = self.named[s.name].shape[1:]
            if not s.fits(have):
                raise DataError(f"input {s.name!r}: each sample has shape {list(have)} but the model expects "
                                f"{list(s.shape)} (samples are stacked on a new leading axis)")

    def __len__(self) -> int:
        return len(self.x)

    def batch_size(self, wanted: int) -> int:
        return self.specs[0].fixed_batch or wanted

    def batches(self, batch: int = 64, limit: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(feed, how many real samples it holds); a model with a fixed batch size gets padded batches."""
        n = len(self) if limit is None else min(limit, len(self))
        if self.named:
            for i in range(n):
                yield self.one(i), 1
            return
        spec = self.specs[0]
        size = self.batch_size(batch)
        for i in range(0, n, size):
            chunk = self.x[i : min(i + size, n)]
            real = len(chunk)
            if spec.fixed_batch and real < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
            yield {spec.name: _cast(spec.name, chunk, spec.dtype)}, real

    def one(self, i: int = 0) -> dict[str, np.ndarray]:
        """The feed for sample i alone (batch 1)."""
        if self.named:
            return cast_feed(self.specs, {k: v[i] for k, v in self.named.items()})
        spec = self.specs[0]
        return {spec.name: _cast(spec.name, self.x[i : i + 1], spec.dtype)}

    def run_each(self, call: Callable[[dict[str, np.ndarray]], Sequence[Any]],
                 indices: Iterable[int]) -> list[np.ndarray]:
        """What `call` answers for each sample alone (batch 1), sample-major as `run` gives it."""
        per_output: list[list[np.ndarray]] = []
        for i in indices:
            outs = [np.asarray(o) for o in call(self.one(i))]
            per_output = per_output or [[] for _ in outs]
            for k, o in enumerate(outs):
                per_output[k].append(o[None] if self.named or o.ndim == 0 else o)
        return [np.concatenate(parts) for parts in per_output]

    def run(self, sess: Any, batch: int = 64, limit: int | None = None) -> list[np.ndarray]:
        """Every output for every sample, sample-major."""
        per_output: list[list[np.ndarray]] = []
        for feed, real in self.batches(batch, limit):
            try:
                outs = sess.run(None, feed)
            except Exception as e:  # ORT's runtime errors carry no common base class
                raise ModelError(f"inference failed: {str(e).strip().splitlines()[0][:300]}") from e
            if not per_output:
                per_output = [[] for _ in outs]
            for k, o in enumerate(outs):
                o = np.asarray(o)
                per_output[k].append(o[None] if self.named or o.ndim == 0 else o[:real])
        return [np.concatenate(parts) if parts else np.zeros((0,)) for parts in per_output]


def cast_feed(specs: list[InputSpec], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A complete feed by input name, each array cast to the dtype its input takes."""
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise DataError(f"the feed lacks input(s) {', '.join(missing)}")
    return {s.name: _cast(s.name, np.asarray(feed[s.name]), s.dtype) for s in specs}


def random_feed(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """A batch-1 feed of plausible values: symbolic dims become 1, integers small, bools mixed."""
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        if s.dtype == np.bool_:
            feed[s.name] = rng.random(shape) < 0.5
        elif np.issubdtype(s.dtype, np.integer):
            feed[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
    return feed


__all__ = ["Feeder", "InputSpec", "cast_feed", "model_inputs", "random_feed", "session_inputs"]
