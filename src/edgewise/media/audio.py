"""Audio in: WAV decode, resampling, and the front end that turns a clip into the model's features.

The front end is declared once (manifest `preprocessing["audio"]`) and this NumPy code is its reference:
training, evaluation and the agent run it, and a C front end is checked against it. In the style of TFLM's
micro_speech and Edge Impulse's MFE/MFCC blocks:

    sample_rate   16000     clips are resampled to it
    clip_ms       1000      clips are cut or zero-padded to it (centred on the loudest second when longer)
    window_ms     30        Hann window, one frame every stride_ms
    stride_ms     20
    fft           512       zero-padded FFT size (>= the window)
    mel_bins      40        triangular filters between low_hz and high_hz (HTK mel scale)
    mfcc          0         0: log-mel energies; > 0: that many DCT-II coefficients (MFCC)
    noise_floor   1e-6      added before the log, so silence is a finite number

Features come out as [frames, mel_bins or mfcc], a (1, frames, bins) "image" for the zoo's CNNs.
"""

from __future__ import annotations

import io
import wave
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgewise.errors import DataError

MAX_SECONDS = 60  # a longer upload is refused before it is decoded


@dataclass(frozen=True)
class AudioSpec:
    sample_rate: int = 16000
    clip_ms: int = 1000
    window_ms: float = 30.0
    stride_ms: float = 20.0
    fft: int = 512
    mel_bins: int = 40
    low_hz: float = 20.0
    high_hz: float = 7600.0
    mfcc: int = 0
    noise_floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.clip_ms < self.window_ms or self.stride_ms <= 0:
            raise DataError(f"audio front end: implausible settings {self}")
        if self.window_samples > self.fft or self.fft & (self.fft - 1):
            raise DataError(f"audio front end: fft must be a power of two >= the window ({self.window_samples} "
                            f"samples), got {self.fft}")
        if not 0 <= self.low_hz < self.high_hz <= self.sample_rate / 2:
            raise DataError(f"audio front end: need 0 <= low_hz < high_hz <= {self.sample_rate / 2}")
        if self.mfcc > self.mel_bins:
            raise DataError("audio front end: mfcc coefficients cannot exceed mel_bins")

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def stride_samples(self) -> int:
        return int(round(self.sample_rate * self.stride_ms / 1000))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_ms / 1000))

    @property
    def frames(self) -> int:
        return 1 + (self.clip_samples - self.window_samples) // self.stride_samples

    @property
    def bins(self) -> int:
        return self.mfcc or self.mel_bins

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioSpec:
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: type(getattr(cls(), k))(v) for k, v in d.items() if k in known})
        except (TypeError, ValueError) as e:
            raise DataError(f"audio preprocessing is malformed ({e})") from e


PCM_TYPES = {"audio/pcm": "<i2", "audio/l16": ">i2"}  # s16le as microphones and `ffmpeg -f s16le` give; RFC 2586


def read_pcm(raw: bytes, ctype: str, params: dict[str, str]) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate from a raw 16-bit PCM body: `audio/pcm` (little-endian) or
    `audio/L16` (big-endian, RFC 2586), with `rate=` (required) and `channels=` (default 1) parameters."""
    dtype = PCM_TYPES.get(ctype.lower())
    if dtype is None:
        raise DataError(f"not a raw PCM type: {ctype}")
    try:
        rate, channels = int(params["rate"]), int(params.get("channels", "1"))
    except (KeyError, ValueError) as e:
        raise DataError(f"{ctype} needs its sample rate, e.g. Content-Type: {ctype}; rate=16000 "
                        "(and channels=N when not mono)") from e
    if rate < 1000 or rate > 384000 or not 1 <= channels <= 16:
        raise DataError(f"unsupported PCM: {rate} Hz, {channels} channel(s)")
    n = len(raw) // (2 * channels)
    if n == 0:
        raise DataError("the body holds no samples")
    if n > MAX_SECONDS * rate:
        raise DataError(f"the recording is {n / rate:.0f} s long; at most {MAX_SECONDS} s is decoded")
    x = np.frombuffer(raw[: n * 2 * channels], dtype).astype(np.float32) / 32768.0
    return x.reshape(-1, channels).mean(1), rate


def read_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate, from PCM WAV bytes (8/16/24/32-bit, any channel
    count: channels are averaged). Anything else is a DataError."""
    try:
        with wave.open(io.BytesIO(raw)) as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            if rate < 1000 or rate > 384000 or channels < 1 or width not in (1, 2, 3, 4):
                raise DataError(f"unsupported WAV: {rate} Hz, {channels} channel(s), {width * 8}-bit")
            if n > MAX_SECONDS * rate:
                raise DataError(f"the recording is {n / rate:.0f} s long; at most {MAX_SECONDS} s is decoded")
            data = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"not a readable PCM WAV file ({e})") from e
    if width == 3:  # 24-bit: widen to 32
        b = np.frombuffer(data[: len(data) // 3 * 3], np.uint8).reshape(-1, 3)
        x = (b[:, 0].astype(np.int32) << 8 | b[:, 1].astype(np.int32) << 16 | b[:, 2].astype(np.int32) << 24)
        x = x.astype(np.float32) / 2**31
    else:
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        x = np.frombuffer(data[: len(data) // width * width], dtype).astype(np.float32)
        x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    if len(x) < channels:
        raise DataError("the WAV file holds no samples")
    return x[: len(x) // channels * channels].reshape(-1, channels).mean(1), rate


def write_wav(x: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM WAV bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buf.getvalue()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling: a Hann-windowed sinc low-pass at the lower Nyquist, then interpolation.
    Plain NumPy, so a device without SciPy runs the same code as training."""
    if src == dst or len(x) == 0:
        return x.astype(np.float32)
    if dst < src:  # anti-alias before decimating
        cutoff = dst / src / 2
        taps = 64 * int(np.ceil(src / dst)) + 1
        n = np.arange(taps) - taps // 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(taps)
        x = np.convolve(x, h / h.sum(), mode="same")
    t = np.arange(int(round(len(x) * dst / src))) * (src / dst)
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)


def fit_clip(x: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Exactly clip_ms of audio: zero-padded (centred) when shorter, the loudest window when longer."""
    n = spec.clip_samples
    if len(x) == n:
        return x
    if len(x) < n:
        out = np.zeros(n, np.float32)
        start = (n - len(x)) // 2
        out[start : start + len(x)] = x
        return out
    energy = np.convolve(x.astype(np.float64) ** 2, np.ones(n), mode="valid")
    start = int(energy.argmax())
    return x[start : start + n]


def mel_filters(spec: AudioSpec) -> np.ndarray:
    """[mel_bins, fft/2 + 1] triangular filters, HTK mel scale."""
    mel = lambda f: 2595.0 * np.log10(1 + np.asarray(f) / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1)  # noqa: E731
    edges = inv(np.linspace(mel(spec.low_hz), mel(spec.high_hz), spec.mel_bins + 2))
    freqs = np.arange(spec.fft // 2 + 1) * spec.sample_rate / spec.fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return np.clip(np.minimum(up, down), 0, None).astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II, [n_out, n_in]."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def features(x: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """[frames, bins] log-mel energies (or MFCCs) of one clip already at spec.sample_rate."""
    x = fit_clip(np.asarray(x, np.float32), spec)
    w, s = spec.window_samples, spec.stride_samples
    idx = np.arange(spec.frames)[:, None] * s + np.arange(w)[None, :]
    frames = x[idx] * np.hanning(w + 2)[1:-1].astype(np.float32)
    power = np.abs(np.fft.rfft(frames, n=spec.fft)) ** 2 / spec.fft
    logmel = np.log(power @ mel_filters(spec).T + spec.noise_floor)
    out = logmel @ dct_matrix(spec.mel_bins, spec.mfcc).T if spec.mfcc else logmel
    return out.astype(np.float32)


def prepare_wav(raw: bytes, spec: AudioSpec) -> np.ndarray:
    """WAV bytes -> the model's (1, 1, frames, bins) tensor."""
    x, rate = read_wav(raw)
    return features(resample(x, rate, spec.sample_rate), spec)[None, None]


__all__ = ["AudioSpec", "features", "fit_clip", "prepare_wav", "read_wav", "resample", "write_wav"]
