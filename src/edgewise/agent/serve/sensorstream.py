"""Sensor readings as they come: per (model, device), a ring of the last window, and a verdict every stride.

A sensor sends chunks of readings (rows of channels, in the bundle's channel order), over MQTT or HTTP,
with an optional `seq` (the index of its first reading in the device's stream) and `t0` (the Unix time of
its first reading). The ring cuts the same windows the generated C stream does (`ew_push_samples`), so a
device and its agent agree window for window. Each window gets the bundle's answer (an anomaly verdict or a
label), stamped with the time its window ends, and goes through the agent's store-and-forward queue.

With `seq`, delivery problems are handled, not guessed at:
- readings already seen (a QoS 1 redelivery, a retry) are dropped and counted as `duplicate_samples`;
- a chunk that starts past the next expected reading leaves a gap: counted (`gaps`, `gap_samples`), and the
  ring starts again after it, since no window may cross a gap (as in `data.sensorlog`);
- a chunk from before a gap it has already skipped (late) is counted as `late_samples` and dropped.
Without `seq`, chunks are appended in arrival order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgewise.agent.serve.inputs import BadInput
from edgewise.errors import DataError
from edgewise.media.sensor import SensorInput

MAX_DEVICES = 10_000  # rings kept at once; the least recently fed goes first beyond this


@dataclass
class WindowRing:
    """The last `sensor.window` readings of one device, and how many it has taken since its last gap."""

    sensor: SensorInput
    buf: np.ndarray = field(init=False)
    count: int = 0  # readings since the stream (re)started
    next_seq: int | None = None  # the seq the next reading should carry
    skipped: list[tuple[int, int]] = field(default_factory=list)  # [start, end) seq ranges a gap jumped over

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.buf = np.zeros((len(self.sensor.channels), 0))
        self.count = 0

    def push(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Append readings [n, channels]; the windows they complete: (readings at its end, [channels, window])."""
        s, w = self.sensor, self.sensor.window
        c0, n = self.count, len(rows)
        joined = np.concatenate([self.buf, rows.T], axis=1)
        self.count += n
        first = c0 + n - joined.shape[1] + 1  # the ordinal of joined's first column
        out = []
        end = max(w, c0 + 1)
        end += (-(end - w)) % s.stride  # the first window end at or after c0 + 1 on the stride grid
        while end <= self.count:
            a = end - w + 1 - first
            out.append((end, joined[:, a : a + w]))
            end += s.stride
        self.buf = joined[:, -w:]
        return out


class SensorStreams:
    """Every device's ring, and the counts `/health` reports."""

    def __init__(self, inference: Any) -> None:
        self.inference = inference
        self.rings: dict[tuple[str, str], WindowRing] = {}
        self.lock = threading.Lock()
        self.counts = {"chunks": 0, "samples": 0, "windows": 0, "duplicate_samples": 0, "late_samples": 0, "gaps": 0,
                       "gap_samples": 0, "rejected": 0}

    def _ring(self, model: str, device: str) -> WindowRing:
        key = (model, device)
        ring = self.rings.get(key)
        if ring is None:
            sensor = SensorInput.from_preprocessing(self.inference.models.manifest(model).preprocessing or {})
            if sensor is None:
                raise BadInput(f"model {model} declares no sensor front end (spectral features or a window of "
                               "readings): it cannot take a stream of readings")
            if len(self.rings) >= MAX_DEVICES:
                self.rings.pop(next(iter(self.rings)))
            ring = self.rings[key] = WindowRing(sensor)
        else:
            self.rings[key] = self.rings.pop(key)  # most recently fed last
        return ring

    def push(self, model: str, device: str, readings: Any, seq: int | None = None,
             t0: float | None = None) -> dict[str, Any]:
        """One chunk from `device` for `model` -> the windows it completed, each with its answer."""
        rows = np.asarray(readings, np.float64)
        with self.lock:
            try:
                ring = self._ring(model, device)
                if rows.ndim != 2 or rows.shape[1] != len(ring.sensor.channels) or not np.isfinite(rows).all():
                    raise BadInput(f"readings must be finite rows of {len(ring.sensor.channels)} values "
                                   f"({', '.join(ring.sensor.channels)}); got shape {tuple(rows.shape)}")
            except (BadInput, DataError) as e:
                self.counts["rejected"] += 1
                raise BadInput(str(e)) from e
            self.counts["chunks"] += 1
            rate = ring.sensor.rate_hz
            if seq is not None:
                seq = int(seq)
                if ring.next_seq is not None and seq < ring.next_seq:
                    seen = min(len(rows), ring.next_seq - seq)
                    # readings a gap jumped over arrive late (too late: the windows have moved on); the
                    # others were delivered already (a redelivery)
                    late = sum(max(0, min(b, seq + seen) - max(a, seq)) for a, b in ring.skipped)
                    self.counts["late_samples"] += late
                    self.counts["duplicate_samples"] += seen - late
                    rows = rows[seen:]
                    if t0 is not None:
                        t0 += seen / rate
                    seq += seen
                elif ring.next_seq is not None and seq > ring.next_seq:
                    self.counts["gaps"] += 1
                    self.counts["gap_samples"] += seq - ring.next_seq
                    ring.skipped = (ring.skipped + [(ring.next_seq, seq)])[-16:]
                    ring.restart()
                ring.next_seq = seq + len(rows)
            if not len(rows):
                return {"model": model, "device": device, "windows": [], "samples": 0}
            self.counts["samples"] += len(rows)
            t_first = t0 if t0 is not None else time.time() - (len(rows) - 1) / rate
            c0 = ring.count
            done = ring.push(rows)
        if not done:
            return {"model": model, "device": device, "windows": [], "samples": len(rows)}
        ends = [e for e, _ in done]
        ts = [round(t_first + (e - c0 - 1) / rate, 3) for e in ends]
        x = ring.sensor.inputs(np.stack([win for _, win in done]))
        answers = self.inference.answer_windows(model, x, ts, device)
        with self.lock:
            self.counts["windows"] += len(answers)
        return {"model": model, "device": device, "windows": answers, "samples": len(rows)}

    def health(self) -> dict[str, Any]:
        with self.lock:
            return {**self.counts, "devices": len(self.rings)}


__all__ = ["SensorStreams", "WindowRing"]
