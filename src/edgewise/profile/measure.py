"""Run models on data and measure what a device owner cares about, in comparable ways."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgewise.errors import DataError, ModelError


def run_model(sess: ort.InferenceSession, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """First output for every sample, run in batches; shape mismatches become a DataError."""
    inp = sess.get_inputs()[0]
    want = inp.shape[1:]
    have = x.shape[1:]
    if len(want) != len(have) or any(isinstance(w, int) and w > 0 and w != h for w, h in zip(want, have)):
        raise DataError(f"data samples have shape {tuple(have)} but the model expects {tuple(want)}")
    outs = []
    for i in range(0, len(x), batch):
        try:
            outs.append(sess.run(None, {inp.name: x[i : i + batch]})[0])
        except Exception as e:  # ORT's runtime errors carry no common base class
            raise ModelError(f"inference failed: {str(e).splitlines()[0][:300]}") from e
    return np.concatenate(outs)


@dataclass
class Fidelity:
    """How a model scores: accuracy against labels when there are labels, and agreement with a reference."""

    accuracy: float | None
    top1_agreement: float | None
    cosine: float | None

    @property
    def score(self) -> float:
        """Accuracy when labels exist, else top-1 agreement with the reference model."""
        value = self.accuracy if self.accuracy is not None else self.top1_agreement
        return float("nan") if value is None else value


def evaluate(out: np.ndarray, y: np.ndarray | None, reference: np.ndarray | None = None) -> Fidelity:
    acc = float((out.argmax(1) == y).mean()) if y is not None else None
    agree = cos = None
    if reference is not None:
        agree = float((out.argmax(1) == reference.argmax(1)).mean())
        a, b = out.reshape(len(out), -1).astype(np.float64), reference.reshape(len(out), -1).astype(np.float64)
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))
    return Fidelity(acc, agree, cos)


@dataclass
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _stats(samples: Sequence[float]) -> LatencyStats:
    a = np.asarray(samples) * 1e3
    return LatencyStats(float(np.percentile(a, 50)), float(np.percentile(a, 90)),
                        float(np.percentile(a, 99)), float(a.mean()), len(a))


def measure_latency(sessions: Sequence[ort.InferenceSession], sample: np.ndarray, runs: int = 200,
                    warmup: int = 20) -> list[LatencyStats]:
    """Batch-1 latency of several models, interleaved run by run.

    Interleaving means a burst of noise on this machine hits every model alike, so their ratios hold.
    """
    feeds = [{s.get_inputs()[0].name: sample[None] if sample.ndim == len(s.get_inputs()[0].shape) - 1
              else sample} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            times[i].append(time.perf_counter() - t)
    return [_stats(t) for t in times]


def measure_throughput(sess: ort.InferenceSession, x: np.ndarray, batch: int, seconds: float = 1.0) -> float:
    """Samples per second at the given batch size (repeats the data to fill the batch)."""
    reps = int(np.ceil(batch / len(x)))
    xb = np.concatenate([x] * reps)[:batch]
    feed = {sess.get_inputs()[0].name: xb}
    sess.run(None, feed)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        sess.run(None, feed)
        n += 1
    return n * batch / (time.perf_counter() - start)


def measure_memory(model_path: Path, threads: int = 1, batch: int = 1) -> dict[str, int]:
    """Peak memory of loading and running the model, measured in a fresh process.

    Returns `rss_delta_bytes` (peak RSS minus RSS before the session existed: weights, ORT arena,
    kernels' scratch) and `arena_bytes` where ORT reports it. A fresh process keeps other models'
    allocations out of the figure.
    """
    cmd = [sys.executable, "-m", "edgewise.profile.memprobe", str(model_path), str(threads), str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ModelError(f"memory probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
