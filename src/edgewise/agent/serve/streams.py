"""Video in: each `--stream NAME=SOURCE` (a file, an RTSP URL, a V4L2 device) is read through FFmpeg (PyAV),
sampled at `fps`, and answered by the bundle's model; the answers go through the store-and-forward queue
as results (never frames).

Per stream, a reader thread decodes and a worker thread infers. Between them sits a slot of two frames:
when the worker falls behind, the oldest waiting frame is dropped and counted (the queue never grows).
A source that fails or drops is reopened with exponential backoff; a file is played once, in real time.
Several streams share the one model instance the model manager holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewise.agent.forward.queue import NewItem
from edgewise.errors import AgentError, EdgewiseError

log = logging.getLogger("edgewise.agent.serve.streams")
WAITING = 2  # frames held between reader and worker; older ones are dropped


def parse_stream(spec: str) -> tuple[str, str]:
    name, sep, source = spec.partition("=")
    if not sep or not name or not source or not name.replace("-", "").replace("_", "").isalnum():
        raise AgentError(f"--stream takes NAME=SOURCE (a file, rtsp://..., rtsp-listen://HOST:PORT/PATH or "
                         f"/dev/videoN), got {spec!r}")
    return name, source


@dataclass
class StreamStats:
    state: str = "starting"  # starting | connected | reconnecting | ended | stopped
    frames_read: int = 0
    frames_sampled: int = 0
    frames_dropped: int = 0
    inferences: int = 0
    results_queued: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str = ""
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))  # decode -> result queued
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        elapsed = max(time.time() - self.started, 1e-9)
        return {"state": self.state, "frames_read": self.frames_read, "frames_sampled": self.frames_sampled,
                "frames_dropped": self.frames_dropped, "inferences": self.inferences,
                "results_queued": self.results_queued, "errors": self.errors, "reconnects": self.reconnects,
                "last_error": self.last_error, "fps": self.inferences / elapsed,
                "latency_p50_ms": lat[len(lat) // 2] if lat else None,
                "latency_p99_ms": lat[int(len(lat) * 0.99)] if lat else None}


class Stream:
    def __init__(self, name: str, source: str, model: str, inference: Any, committer: Any = None, fps: float = 5.0,
                 max_backoff_s: float = 10.0) -> None:
        if fps <= 0:
            raise AgentError("--fps must be positive")
        self.name, self.source, self.model, self.inference = name, source, model, inference
        self.committer, self.period, self.max_backoff_s = committer, 1.0 / fps, max_backoff_s
        self.stats = StreamStats()
        self.recent: deque = deque(maxlen=20)  # the last answers, for GET /v1/streams
        self._slot: deque = deque()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"stream-{name}-read", daemon=True)
        self._worker = threading.Thread(target=self._work_loop, name=f"stream-{name}-infer", daemon=True)

    @property
    def is_file(self) -> bool:
        return "://" not in self.source and not self.source.startswith("/dev/")

    def start(self) -> Stream:
        self._reader.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._reader.join(10)
        self._worker.join(10)
        if self.stats.state != "ended":
            self.stats.state = "stopped"

    # ---- reading ------------------------------------------------------------------------------------
    def _open(self) -> Any:
        """rtsp:// pulls from a camera or server; rtsp-listen://HOST:PORT/PATH waits for a camera to push
        to the agent (RTSP ANNOUNCE/RECORD); files and /dev/videoN are opened as they are."""
        try:
            import av
        except ImportError as e:
            raise AgentError("video streams need PyAV: pip install 'edgewise[video]'") from e

        source, options = self.source, {}
        if source.startswith("rtsp-listen://"):
            source = "rtsp://" + source.removeprefix("rtsp-listen://")
            options = {"rtsp_flags": "listen", "listen_timeout": "10"}  # seconds to wait for a push
        elif source.startswith("rtsp://"):
            options = {"rtsp_transport": "tcp"}
        if self.is_file and not Path(source).is_file():
            raise AgentError(f"stream {self.name}: no such file {source}")
        return av.open(source, options=options, timeout=(15.0, 5.0))

    def _read_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                container = self._open()
            except Exception as e:  # noqa: BLE001 - a source that cannot be opened now may open later
                self._failed(e)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.stats.state = "connected"
            backoff = 0.5
            try:
                self._play(container)
            except Exception as e:  # noqa: BLE001 - a dropped stream is reopened
                self._failed(e)
            finally:
                container.close()
            if self.is_file and self.stats.state == "connected":
                self.stats.state = "ended"  # a file plays once
                return
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)

    def _failed(self, e: BaseException) -> None:
        self.stats.errors += 1
        self.stats.reconnects += 1
        self.stats.state = "reconnecting"
        self.stats.last_error = f"{type(e).__name__}: {str(e)[:200]}"
        log.warning("stream %s: %s; reopening with backoff", self.name, self.stats.last_error)

    def _play(self, container: Any) -> None:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        t0_wall, t0_pts, next_t = None, None, None
        for frame in container.decode(video):
            if self._stop.is_set():
                return
            self.stats.frames_read += 1
            if frame.time is None:  # no timestamp (an RTSP stream's first frame): nothing to pace it by
                continue
            t = float(frame.time)
            if t0_pts is None:
                t0_wall, t0_pts, next_t = time.monotonic(), t, t
            if self.is_file:  # a file plays in real time, like the camera it stands in for
                lag = (t - t0_pts) - (time.monotonic() - t0_wall)
                if lag > 0:
                    self._stop.wait(lag)
            if t + 1e-6 < next_t:
                continue  # sampled down to the stream's fps
            next_t = t + self.period
            self.stats.frames_sampled += 1
            item = (frame.to_image(), time.perf_counter(), t)
            with self._cv:
                if len(self._slot) >= WAITING:
                    self._slot.popleft()
                    self.stats.frames_dropped += 1
                self._slot.append(item)
                self._cv.notify()

    # ---- inferring ----------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while True:
            with self._cv:
                while not self._slot and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                image, decoded_at, t = self._slot.popleft()
            try:
                answer = self.inference.answer_picture(self.model, image, queue=False)  # queued below, with the stream
            except EdgewiseError as e:
                self.stats.errors += 1
                self.stats.last_error = str(e)[:200]
                continue
            self.stats.inferences += 1
            self._queue(answer, t)
            self.stats.latencies_ms.append((time.perf_counter() - decoded_at) * 1e3)

    def _queue(self, answer: dict[str, Any], t: float) -> None:
        """What leaves the device for a frame: its answer (boxes or label), never the frame."""
        keep = ("boxes", "image_size") if answer.get("task") == "detection" else ("label", "score")
        event = {"stream": self.name, "m": self.model, "t": round(t, 3), "ts": round(time.time(), 3),
                 **{k: answer[k] for k in keep if k in answer}}
        self.recent.append(event)
        if self.committer is None or answer.get("task") == "classification":
            return  # no upstream; or a classifier, whose answer the cascade already queued
        self.committer.submit([NewItem(json.dumps(event, separators=(",", ":")).encode(), topic="detection")])
        self.stats.results_queued += 1


__all__ = ["Stream", "StreamStats", "parse_stream"]
