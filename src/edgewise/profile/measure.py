"""Run models on data and measure what a device owner cares about, in comparable ways."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgewise.data import Dataset
from edgewise.errors import ModelError
from edgewise.profile.feeds import Feeder, cast_feed, session_inputs
from edgewise.profile.fidelity import Fidelity


def run_outputs(sess: ort.InferenceSession, data: Dataset | np.ndarray, batch: int = 64,
                limit: int | None = None) -> list[np.ndarray]:
    """Every output for every sample (sample-major), for single-input arrays or named multi-input data."""
    return Feeder(session_inputs(sess), data).run(sess, batch, limit)


def run_model(sess: ort.InferenceSession, x: Dataset | np.ndarray, batch: int = 64) -> np.ndarray:
    """The first output for every sample; shape mismatches become a DataError."""
    return run_outputs(sess, x, batch)[0]


def evaluate(out: np.ndarray, y: np.ndarray | None, reference: np.ndarray | None = None) -> Fidelity:
    """Classification fidelity of one output: accuracy with labels, top-1 agreement and cosine beside."""
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


def _feed(sess: ort.InferenceSession, sample: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch-1 feed for this session: a single sample array (with or without its batch axis), or a
    complete feed by input name, each cast to the dtype the session takes."""
    specs = session_inputs(sess)
    if isinstance(sample, dict):
        return cast_feed(specs, sample)
    x = sample if sample.ndim == len(specs[0].shape) else sample[None]
    return Feeder(specs, x).one(0)


# Models take turns in blocks: BLOCK runs in a row, the first SKIP of them not counted. Taking turns run by run
# made ONNX Runtime and OpenVINO slow each other down: YOLOv8n int8 on OpenVINO ran 1.25 ms alone and 1.71-1.88
# ms when every run followed an ONNX Runtime one (its worker thread idles and its data is evicted), which
# tilted the search's choice between runtimes. In blocks of 10 counting the last 8 it ran 1.28 ms, and ORT
# fp32 2.82 ms against 2.77 alone; blocks still alternate often enough that noise hits every model alike.
BLOCK, SKIP = 10, 2


def interleaved(calls: Sequence[Callable[[], object]], runs: int = 200, warmup: int = 20,
                block: int = BLOCK, skip: int = SKIP) -> list[list[float]]:
    """Seconds per call of each callable: `runs` timed calls each, taken in turns of `block` calls in a row
    whose first `skip` are not counted (after `warmup` calls each)."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    while calls and len(times[0]) < runs:
        for i, call in enumerate(calls):
            for k in range(block):
                t = time.perf_counter()
                call()
                if k >= skip:
                    times[i].append(time.perf_counter() - t)
    return [t[:runs] for t in times]


def measure_latency(sessions: Sequence[ort.InferenceSession], sample: np.ndarray | dict[str, np.ndarray],
                    runs: int = 200, warmup: int = 20) -> list[LatencyStats]:
    """Batch-1 latency of several models, measured in turns (`interleaved`), so a burst of noise on this
    machine hits every model alike and their ratios hold."""
    feeds = [_feed(s, sample) for s in sessions]
    calls = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]
    return [_stats(t) for t in interleaved(calls, runs, warmup)]


def measure_throughput(sess: ort.InferenceSession, x: Dataset | np.ndarray, batch: int,
                       seconds: float = 1.0) -> float:
    """Samples per second at the given batch size (repeats the data to fill the batch). Models with
    several inputs or a fixed batch size run batch 1."""
    feeder = Feeder(session_inputs(sess), x)
    if feeder.named or feeder.specs[0].fixed_batch:
        batch = feeder.specs[0].fixed_batch or 1
        feed = next(feeder.batches(batch))[0]
    else:
        xs = feeder.x
        xb = np.concatenate([xs] * int(np.ceil(batch / len(xs))))[:batch]
        feed = next(Feeder(feeder.specs, xb).batches(batch))[0]
    sess.run(None, feed)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        sess.run(None, feed)
        n += 1
    return n * batch / (time.perf_counter() - start)


def measure_memory(model_path: Path, threads: int = 1, batch: int = 1,
                   feed: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Peak memory of loading and running the model, measured in a fresh process, on the runtime the model
    names (ONNX Runtime's CPU provider, or OpenVINO with the IR saved beside it: `<stem>.xml`, `<stem>.bin`).

    Returns `rss_delta_bytes` (peak RSS minus RSS before the session existed: weights, the runtime's arena,
    kernels' scratch), `load_delta_bytes` and `running_on`. A fresh process keeps other models' allocations
    out of the figure. `feed` is a real batch-1 input (random values of the right shapes and dtypes otherwise).
    """
    with tempfile.TemporaryDirectory(prefix="edgewise-memfeed-") as tmp:
        cmd = [sys.executable, "-m", "edgewise.profile.memprobe", str(model_path), str(threads), str(batch)]
        if feed is not None:
            np.savez(Path(tmp) / "feed.npz", **feed)
            cmd.append(str(Path(tmp) / "feed.npz"))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ModelError(f"memory probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_memory(model: onnx.ModelProto, threads: int = 1, feed: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """`measure_memory` of a model held here, saved with the OpenVINO IR it carries, if any."""
    from edgewise.modelio import save_model
    from edgewise.profile.openvino import ir_files

    with tempfile.TemporaryDirectory(prefix="edgewise-mem-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        for name, data in ir_files(model).items():  # model.xml, model.bin: beside model.onnx
            (Path(tmp) / name).write_bytes(data)
        return measure_memory(path, threads, feed=feed)
