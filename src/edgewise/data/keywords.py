"""A bundled keyword-spotting set, synthesized offline with espeak-ng on first use and cached as a WAV
folder (the layout `audio_folder` reads, so it doubles as an example of a user's own set).

Ten keywords (yes no up down left right on off stop go), `unknown` (other words) and `silence` (noise
only). Each keyword is spoken by 16 espeak-ng voice variants at two speeds and two pitches; every clip gets
a random time shift, amplitude and background noise (white or brown, 5-30 dB SNR). Four voices are held
out: the test split is theirs alone, so test accuracy measures how the model does on speakers it never
heard. Seeded: the same set every time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.errors import DataError

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN = ["cat", "dog", "bird", "house", "tree", "seven", "happy", "water", "table", "music", "yellow", "window",
           "learn", "follow", "forward", "visual"]
TRAIN_VOICES = ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "klatt", "klatt2", "croak"]
TEST_VOICES = ["m6", "m7", "f5", "klatt3"]
VERSION = "v1"
RATE = 16000


def cache_dir() -> Path:
    base = os.environ.get("EDGEWISE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                             os.path.expanduser("~/.cache"), "edgewise")
    return Path(base) / f"keywords-{VERSION}"


def _say(word: str, voice: str, speed: int, pitch: int, tmp: Path) -> tuple[np.ndarray, int]:
    from edgewise.media.audio import read_wav

    out = tmp / "say.wav"
    r = subprocess.run(["espeak-ng", "-w", str(out), "-v", f"en+{voice}", "-s", str(speed), "-p", str(pitch), word],
                       capture_output=True, timeout=30, check=False)
    if r.returncode != 0:
        raise DataError(f"espeak-ng failed for {word!r} ({voice}): {r.stderr.decode(errors='replace')[:200]}")
    return read_wav(out.read_bytes())


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    if rng.random() < 0.5:
        return white
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(401) / 401, mode="same")  # keep it from drifting away
    return (brown / (brown.std() + 1e-9)).astype(np.float32)


def _clip(speech: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One second: the utterance shifted at random, scaled, over background noise."""
    out = np.zeros(RATE, np.float32)
    level = float(rng.uniform(0.002, 0.05))
    if speech is not None:
        speech = speech[:RATE] / (np.abs(speech).max() + 1e-9) * float(rng.uniform(0.3, 0.9))
        start = int(rng.integers(0, RATE - len(speech) + 1))
        out[start : start + len(speech)] = speech
        snr_db = float(rng.uniform(5, 30))
        level = float(np.sqrt(np.mean(speech**2)) / 10 ** (snr_db / 20))
    return np.clip(out + level * _noise(RATE, rng), -1, 1)


def synthesize(root: Path, seed: int = 0) -> Path:
    """Write the set under `root` (class subfolders of VOICE_N.wav), atomically: a half-written cache
    is never read."""
    from edgewise.media.audio import resample, write_wav

    if shutil.which("espeak-ng") is None:
        raise DataError("the keywords set is synthesized with espeak-ng, which is not installed "
                        "(Debian: apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keywords-", dir=root.parent))
    try:
        n = 0
        for voice in TRAIN_VOICES + TEST_VOICES:
            jobs = [(w, w, s, p) for w in KEYWORDS for s in (140, 185) for p in (35, 65)]
            jobs += [("unknown", w, 165, 50) for w in rng.choice(UNKNOWN, 6, replace=False)]
            jobs += [("silence", None, 0, 0)] * 3
            for label, word, speed, pitch in jobs:
                speech = None
                if word is not None:
                    x, rate = _say(str(word), voice, speed, pitch, tmp)
                    speech = resample(x, rate, RATE)
                (tmp / label).mkdir(exist_ok=True)
                (tmp / label / f"{voice}_{n:05d}.wav").write_bytes(write_wav(_clip(speech, rng), RATE))
                n += 1
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def keywords() -> Dataset:
    from edgewise.data.audiofolder import audio_folder

    root = cache_dir()
    if not (root / "yes").is_dir():
        synthesize(root)
    ds = audio_folder(root, groups_from_name=True)
    ds.name = "keywords"
    ds.preprocessing["test_groups"] = list(TEST_VOICES)
    return ds
