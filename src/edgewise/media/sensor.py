"""Sensor readings in: a recording of rows (one value per channel) cut into the windows a model takes, and
turned into its input by the bundle's declared front end. Two front ends:

    spectral    `preprocessing["spectral"]`: features per window (`media.spectral`)
    raw         a window model (`cnn1d`, layout NCT) on the readings themselves, standardized per channel with
                the training split's mean and std (`preprocessing["mean"]`, `["std"]`)

The agent, the benchmarks and the tests cut windows here; the generated C (`codegen/sensor.py`) cuts the
same ones: starts 0, stride, 2 x stride, ... once a window is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgewise.errors import DataError
from edgewise.media.spectral import SpectralSpec, features


@dataclass(frozen=True)
class SensorInput:
    channels: tuple[str, ...]
    rate_hz: float
    window: int  # samples
    stride: int  # samples between window starts
    spectral: SpectralSpec | None = None
    mean: tuple[float, ...] = ()  # raw windows: per channel
    std: tuple[float, ...] = ()

    @classmethod
    def from_preprocessing(cls, pre: dict[str, Any]) -> SensorInput | None:
        """The bundle's sensor front end, or None when it takes no sensor windows."""
        if pre.get("spectral"):
            spec = SpectralSpec.from_dict(pre["spectral"])
            return cls(spec.channels, spec.rate_hz, spec.window, _stride(pre, spec.rate_hz, spec.window), spec)
        if pre.get("layout") == "NCT" and pre.get("rate_hz") and pre.get("window_ms") and pre.get("channels"):
            rate = float(pre["rate_hz"])
            window = int(round(float(pre["window_ms"]) * rate / 1000.0))
            c = len(pre["channels"])
            mean = tuple(float(v) for v in pre.get("mean", [0.0] * c))
            std = tuple(float(v) for v in pre.get("std", [1.0] * c))
            if len(mean) != c or len(std) != c:
                raise DataError(f"the bundle's per-channel mean/std do not match its {c} channels")
            return cls(tuple(pre["channels"]), rate, window, _stride(pre, rate, window), None, mean, std)
        return None

    @property
    def kind(self) -> str:
        return "spectral" if self.spectral is not None else "raw"

    def windows(self, readings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A recording [samples, channels] -> (the sample count at each window's end, windows [N, channels,
        window])."""
        x = np.asarray(readings, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.channels):
            raise DataError(f"readings must be rows of {len(self.channels)} values ({', '.join(self.channels)}); "
                            f"got shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise DataError("the readings hold NaN or infinite values")
        if len(x) < self.window:
            raise DataError(f"a window is {self.window} samples ({self.window / self.rate_hz:g} s at "
                            f"{self.rate_hz:g} Hz); got {len(x)}")
        starts = np.arange(0, len(x) - self.window + 1, self.stride)
        return starts + self.window, np.stack([x[s : s + self.window].T for s in starts])

    def inputs(self, windows: np.ndarray) -> np.ndarray:
        """Windows [N, channels, window] -> the model's input, float32."""
        if self.spectral is not None:
            return features(self.spectral, windows)
        m, s = np.array(self.mean)[None, :, None], np.array(self.std)[None, :, None]
        return ((np.asarray(windows, np.float64) - m) / s).astype(np.float32)


def _stride(pre: dict[str, Any], rate: float, window: int) -> int:
    """Samples between window starts: the dataset's stride (ms), else half a window."""
    stride_ms = float(pre.get("stride_ms") or 500.0 * window / rate)
    return max(1, int(round(stride_ms * rate / 1000.0)))


def parse_readings(text: str, channels: tuple[str, ...]) -> np.ndarray:
    """CSV text of readings -> [samples, channels]. With a header, the channels are found by name (other
    columns, a timestamp or a label, are ignored); without one, the first columns are the channels in
    order. Comma, semicolon or tab separated."""
    import csv
    import io

    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError("no readings in the CSV body")
    delim = max(",;\t", key=lines[0].count)
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delim))
    head = [h.strip() for h in rows[0]]
    try:
        [float(v) for v in head[: len(channels)]]
        cols, body = list(range(len(channels))), rows
    except ValueError:
        missing = [c for c in channels if c not in head]
        if missing:
            raise DataError(f"the CSV header has no column {', '.join(missing)} (the model reads "
                            f"{', '.join(channels)})") from None
        cols, body = [head.index(c) for c in channels], rows[1:]
    try:
        return np.array([[float(r[i]) for i in cols] for r in body], np.float64).reshape(-1, len(channels))
    except (ValueError, IndexError) as e:
        raise DataError(f"a CSV row without a number for every channel ({e})") from e




__all__ = ["SensorInput", "parse_readings"]
