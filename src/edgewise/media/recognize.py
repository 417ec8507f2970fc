"""Keywords in a long recording: slide the declared front end over the audio, run the model every hop, and
smooth the posteriors into detections, in the manner of TFLM micro_speech's RecognizeCommands.

Each hop (by default every 2 strides, 40 ms) scores the last clip_ms of audio. Scores are averaged over
`average_ms`; a detection is the averaged top class when it is a keyword (not `silence` / `unknown`), its
average is at least `threshold`, it topped at least `min_count` of the averaged hops, and the same word was
not reported within `suppress_ms` (other words may follow at once). NumPy only: the agent runs it, and it is
the reference a streaming C version is checked against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgewise.media.audio import AudioSpec, features

IGNORED = ("silence", "unknown", "_silence_", "_unknown_", "_background_noise_")


@dataclass
class Smoothing:
    average_ms: float = 200.0  # chosen on the training voices (bench_kws reports the held-out ones)
    threshold: float = 0.5
    suppress_ms: float = 1000.0
    min_count: int = 2
    hop_strides: int = 2


@dataclass
class Recognizer:
    labels: list[str]
    cfg: Smoothing = field(default_factory=Smoothing)

    def __post_init__(self) -> None:
        self._recent: deque[tuple[float, np.ndarray]] = deque()
        self._last: dict[str, float] = {}

    def update(self, t_ms: float, scores: np.ndarray) -> tuple[str, float, float] | None:
        """Feed one hop's class probabilities at time `t_ms` (the end of its clip); a detection or None."""
        self._recent.append((t_ms, np.asarray(scores, np.float64)))
        while self._recent and self._recent[0][0] < t_ms - self.cfg.average_ms:
            self._recent.popleft()
        stack = np.stack([s for _, s in self._recent])
        avg = stack.mean(0)
        k = int(avg.argmax())
        label = self.labels[k] if k < len(self.labels) else str(k)
        if label in IGNORED or avg[k] < self.cfg.threshold or int((stack.argmax(1) == k).sum()) < self.cfg.min_count:
            return None
        if t_ms - self._last.get(label, -1e18) < self.cfg.suppress_ms:
            return None
        self._last[label] = t_ms
        return label, float(avg[k]), t_ms


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(-1)
    if x.min() >= 0 and abs(x.sum() - 1) < 1e-3:
        return x
    e = np.exp(x - x.max())
    return e / e.sum()


def detect_keywords(samples: np.ndarray, spec: AudioSpec, labels: list[str],
                    run: Callable[[np.ndarray], np.ndarray], cfg: Smoothing | None = None) -> list[dict]:
    """Detections in a recording already at spec.sample_rate: [{"label", "score", "time_s"}], time being the
    end of the clip that decided it. `run` maps a (1, 1, frames, bins) tensor to the model's scores."""
    cfg = cfg or Smoothing()
    rec = Recognizer(labels, cfg)
    clip, hop = spec.clip_samples, spec.stride_samples * cfg.hop_strides
    x = np.asarray(samples, np.float32)
    if len(x) < clip:  # a short recording is one clip, padded
        x = np.concatenate([x, np.zeros(clip - len(x), np.float32)])
    out = []
    for end in range(clip, len(x) + 1, hop):
        f = features(x[end - clip : end], spec)
        hit = rec.update(end / spec.sample_rate * 1000, softmax(run(f[None, None])))
        if hit:
            out.append({"label": hit[0], "score": round(hit[1], 4), "time_s": round(hit[2] / 1000, 3)})
    return out


__all__ = ["Recognizer", "Smoothing", "detect_keywords"]
