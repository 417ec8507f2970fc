"""The spectral front end for sensor windows (vibration, motion), in the style of Edge Impulse's spectral
analysis block: what a window of raw readings [channels, samples] becomes before the model sees it.

Declared once (manifest `preprocessing["spectral"]`); this NumPy code is the reference that training,
evaluation and the agent run, and the generated C (`codegen/spectral.py`) is checked against it. Per channel,
in the channel order the manifest records:

    filter      the window's mean is removed (DC, gravity, sensor offset)
    bands       Welch power: Hann segments of `fft` samples, half-overlapping, |FFT|^2 / fft averaged;
                bins 1..fft/2 summed into `bands` equal-width bands, log10(power + floor)
    rms         log10(RMS + floor)
    crest       peak / RMS
    skew        E[x^3] / RMS^3
    kurtosis    E[x^4] / RMS^4   (3 for Gaussian noise; impulses from a bearing fault raise it)

Features are channel-major ([c0 bands..., c0 rms, crest, skew, kurtosis, c1 ...]), then standardized with
the mean and std fitted on the training windows and clipped to +-`clip`, so one wild reading cannot set
the model's input range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgewise.errors import DataError

STATS = ("rms", "crest", "skew", "kurtosis")


@dataclass(frozen=True)
class SpectralSpec:
    rate_hz: float
    window: int  # samples per window, per channel
    channels: tuple[str, ...]
    fft: int = 128
    bands: int = 16
    floor: float = 1e-10
    clip: float = 8.0
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.fft < 8 or self.fft & (self.fft - 1):
            raise DataError(f"spectral front end: fft must be a power of two >= 8, got {self.fft}")
        if self.window < self.fft:
            raise DataError(f"spectral front end: a window of {self.window} samples is shorter than the fft "
                            f"({self.fft}); use a longer --window or a smaller fft")
        if self.bands < 1 or (self.fft // 2) % self.bands:
            raise DataError(f"spectral front end: bands must divide fft/2 = {self.fft // 2}, got {self.bands}")
        if not self.channels:
            raise DataError("spectral front end: no channels")
        if self.mean and (len(self.mean) != self.features or len(self.std) != self.features):
            raise DataError(f"spectral front end: mean/std need {self.features} values each")

    @property
    def per_channel(self) -> int:
        return self.bands + len(STATS)

    @property
    def features(self) -> int:
        return len(self.channels) * self.per_channel

    @property
    def segments(self) -> int:
        return 1 + (self.window - self.fft) // (self.fft // 2)

    def feature_names(self) -> list[str]:
        hz = self.rate_hz / 2 / self.bands
        names = [f"{b * hz:g}-{(b + 1) * hz:g}Hz" for b in range(self.bands)] + list(STATS)
        return [f"{c}:{n}" for c in self.channels for n in names]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["mean"], d["std"] = list(self.channels), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpectralSpec:
        try:
            known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            for k in ("channels", "mean", "std"):
                if k in known:
                    known[k] = tuple(known[k])
            return cls(**known)
        except (TypeError, KeyError) as e:
            raise DataError(f"the bundle's spectral front end is malformed ({e})") from e

    @classmethod
    def for_windows(cls, preprocessing: dict[str, Any], sample_shape: tuple[int, ...], **settings: Any
                    ) -> SpectralSpec:
        """The spec for a dataset of raw windows [channels, samples] (rate and channel names from its
        preprocessing), before fitting."""
        if len(sample_shape) != 2:
            raise DataError(f"spectral features need raw sensor windows (channels, samples); got sample shape "
                            f"{sample_shape}")
        rate = preprocessing.get("rate_hz")
        if not rate:
            raise DataError("spectral features need the sampling rate: the dataset records no rate_hz (a sensor "
                            "log gives it; a .npz of windows does not)")
        c, t = sample_shape
        channels = tuple(preprocessing.get("channels") or [f"ch{i}" for i in range(c)])
        fft = settings.pop("fft", min(128, 1 << (int(t).bit_length() - 1)))
        bands = settings.get("bands", cls.bands)
        if fft < 2 * bands:
            need = 2 * bands
            raise DataError(f"a window of {t} samples is too short for the spectral front end's {bands} bands: it "
                            f"needs at least {need} ({1000 * need / float(rate):g} ms at {float(rate):g} Hz); use a "
                            "longer --window")
        return cls(float(rate), int(t), channels, fft=fft, **settings)


def raw_features(spec: SpectralSpec, windows: np.ndarray) -> np.ndarray:
    """[N, channels, samples] raw readings -> [N, features] before standardization (float64)."""
    x = np.asarray(windows, np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.shape[1:] != (len(spec.channels), spec.window):
        raise DataError(f"the spectral front end takes windows of {len(spec.channels)} channels x {spec.window} "
                        f"samples; got {tuple(x.shape[1:])}")
    if not np.isfinite(x).all():
        raise DataError("the window holds NaN or infinite readings")
    x = x - x.mean(-1, keepdims=True)
    n, half = spec.fft, spec.fft // 2
    hann = np.hanning(n + 2)[1:-1]
    starts = np.arange(spec.segments) * half
    segs = np.stack([x[..., s : s + n] for s in starts], -2) * hann  # [N, C, S, fft]
    power = (np.abs(np.fft.rfft(segs, axis=-1)) ** 2 / n).mean(-2)[..., 1 : half + 1]  # [N, C, fft/2]
    bands = np.log10(power.reshape(*power.shape[:-1], spec.bands, -1).sum(-1) + spec.floor)
    rms = np.sqrt((x**2).mean(-1))
    safe = np.maximum(rms, 1e-12)
    stats = np.stack([np.log10(rms + spec.floor), np.abs(x).max(-1) / safe, (x**3).mean(-1) / safe**3,
                      (x**4).mean(-1) / safe**4], -1)
    return np.concatenate([bands, stats], -1).reshape(len(x), -1)


def as_logged(x: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """Windows as the sensor read them: a per-channel standardization the loader applied (sensor logs) is
    undone, since the front end runs on the device's raw readings."""
    if preprocessing.get("standardize") and "mean" in preprocessing:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * np.reshape(preprocessing["std"], shape) + np.reshape(preprocessing["mean"], shape)
    return x


def fit(spec: SpectralSpec, windows: np.ndarray) -> SpectralSpec:
    """The spec with its standardization fitted on `windows` (the training split)."""
    f = raw_features(spec, windows)
    return replace(spec, mean=tuple(float(v) for v in f.mean(0)),
                   std=tuple(float(v) for v in np.maximum(f.std(0), 1e-6)))


def features(spec: SpectralSpec, windows: np.ndarray) -> np.ndarray:
    """[N, channels, samples] -> [N, features] float32, standardized and clipped: the model's input."""
    if not spec.mean:
        raise DataError("the spectral front end has no fitted mean/std")
    f = (raw_features(spec, windows) - np.array(spec.mean)) / np.array(spec.std)
    return np.clip(f, -spec.clip, spec.clip).astype(np.float32)


__all__ = ["STATS", "SpectralSpec", "as_logged", "features", "fit", "raw_features"]
