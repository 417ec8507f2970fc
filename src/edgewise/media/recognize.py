"""Keywords in a long recording: slide the declared front end over the audio, run the model every hop, and
smooth the posteriors into detections, in the manner of TFLM micro_speech's RecognizeCommands.

Each hop (by default every 2 strides, 40 ms) scores the last clip_ms of audio. Scores are averaged over
`average_ms`; a detection is the averaged top class when it is a keyword (not `silence` / `unknown`), its
average is at least `threshold`, it topped at least `min_count` of the averaged hops, and the same word was
not reported within `suppress_ms` (other words may follow at once). NumPy only: the agent runs it, and it is
the reference a streaming C version is checked against.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgewise.errors import DataError
from edgewise.media.audio import AudioSpec, features

IGNORED = ("silence", "unknown", "_silence_", "_unknown_", "_background_noise_")


@dataclass
class Smoothing:
    average_ms: float = 200.0  # chosen on the training voices (bench_kws reports the held-out ones)
    threshold: float = 0.5
    suppress_ms: float = 1000.0
    min_count: int = 2
    hop_strides: int = 2

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, stride_ms: float = AudioSpec.stride_ms) -> Smoothing:
        """The bundle's `postprocessing.keyword_spotting` (average_ms, threshold, suppress_ms, min_count,
        hop_ms: a whole number of front-end strides); what it leaves out keeps the defaults."""
        d = dict(d or {})
        unknown = set(d) - {"average_ms", "threshold", "suppress_ms", "min_count", "hop_ms"}
        if unknown:
            raise DataError(f"keyword_spotting: unknown settings {', '.join(sorted(unknown))}")
        try:
            cfg = cls()
            hop_ms = float(d.pop("hop_ms", cfg.hop_strides * stride_ms))
            cfg = cls(**{k: type(getattr(cfg, k))(v) for k, v in d.items()},
                      hop_strides=int(round(hop_ms / stride_ms)))
        except (TypeError, ValueError) as e:
            raise DataError(f"keyword_spotting: {e}") from e
        if cfg.hop_strides < 1 or abs(cfg.hop_strides * stride_ms - hop_ms) > 1e-6:
            raise DataError(f"keyword_spotting: hop_ms must be a multiple of the front end's {stride_ms:g} ms stride")
        if not (0 < cfg.threshold <= 1 and cfg.average_ms >= 0 and cfg.suppress_ms >= 0 and cfg.min_count >= 1):
            raise DataError("keyword_spotting: need 0 < threshold <= 1, average_ms and suppress_ms >= 0, "
                            "min_count >= 1")
        return cfg

    def as_dict(self, stride_ms: float = AudioSpec.stride_ms) -> dict[str, Any]:
        return {"average_ms": self.average_ms, "threshold": self.threshold, "suppress_ms": self.suppress_ms,
                "min_count": self.min_count, "hop_ms": self.hop_strides * stride_ms}

    def hops(self, spec: AudioSpec) -> tuple[int, int, int]:
        """(hop in samples, hops averaged, hops a word stays suppressed): the rules in whole hops, so the
        NumPy reference and the generated C (`codegen.stream`) count them the same way."""
        hop = spec.stride_samples * self.hop_strides
        hop_ms = hop * 1000 / spec.sample_rate
        return hop, int(math.floor(self.average_ms / hop_ms + 1e-9)) + 1, int(math.ceil(self.suppress_ms / hop_ms - 1e-9))


@dataclass
class Recognizer:
    """Averages the last `average` hops' scores; reports a keyword at most once per `suppress` hops."""

    labels: list[str]
    average: int
    suppress: int
    cfg: Smoothing = field(default_factory=Smoothing)

    def __post_init__(self) -> None:
        self._recent: deque[np.ndarray] = deque(maxlen=self.average)
        self._last: dict[str, int] = {}

    def update(self, hop: int, scores: np.ndarray) -> tuple[str, float] | None:
        """Feed hop number `hop`'s class probabilities; (label, averaged score) or None."""
        self._recent.append(np.asarray(scores, np.float64))
        stack = np.stack(list(self._recent))
        avg = stack.mean(0)
        k = int(avg.argmax())
        label = self.labels[k] if k < len(self.labels) else str(k)
        if label in IGNORED or avg[k] < self.cfg.threshold or int((stack.argmax(1) == k).sum()) < self.cfg.min_count:
            return None
        if label in self._last and hop - self._last[label] < self.suppress:
            return None
        self._last[label] = hop
        return label, float(avg[k])


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
    hop, average, suppress = cfg.hops(spec)
    rec = Recognizer(labels, average, suppress, cfg)
    clip = spec.clip_samples
    x = np.asarray(samples, np.float32)
    if len(x) < clip:  # a short recording is one clip, padded
        x = np.concatenate([x, np.zeros(clip - len(x), np.float32)])
    out = []
    for i, end in enumerate(range(clip, len(x) + 1, hop)):
        f = features(x[end - clip : end], spec)
        hit = rec.update(i, softmax(run(f[None, None])))
        if hit:
            out.append({"label": hit[0], "score": round(hit[1], 4), "time_s": round(end / spec.sample_rate, 3)})
    return out


__all__ = ["Recognizer", "Smoothing", "detect_keywords"]
