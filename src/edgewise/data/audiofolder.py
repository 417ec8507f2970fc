"""Audio from a folder, in the layout keyword-spotting sets already come in: one subfolder of .wav files per
class (Speech Commands, Edge Impulse's export). Any sample rate and channel count; each clip is resampled
and turned into features by the declared front end (`edgewise.media.audio`), the same code the agent runs,
and the front end is recorded in the dataset's preprocessing so the bundle carries it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.errors import DataError

MAX_CLIPS = 20_000


def wav_files(root: Path) -> list[Path]:
    return sorted(f for f in root.rglob("*") if f.suffix.lower() == ".wav")


def is_audio_folder(root: Path) -> bool:
    return any(True for _ in root.glob("*/*.wav")) or any(True for _ in root.glob("*/*.WAV"))


def audio_folder(root: Path, spec_doc: dict | None = None, groups_from_name: bool = False) -> Dataset:
    """Features of every clip, labels from the subfolder names. With `groups_from_name`, the part of each
    file name before the first `_` is its group (a speaker), kept in `groups`."""
    from edgewise.media.audio import AudioSpec, features, read_wav, resample

    root = Path(root)
    spec = AudioSpec.from_dict(spec_doc or {})
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and wav_files(p))
    files = [(f, k) for k, c in enumerate(classes) for f in wav_files(root / c)]
    if not files:
        raise DataError(f"{root} holds no .wav files in class subfolders (e.g. {root}/yes/0001.wav)")
    if len(files) > MAX_CLIPS:
        raise DataError(f"{root} holds {len(files):,} clips; at most {MAX_CLIPS:,} are read")
    x = np.zeros((len(files), 1, spec.frames, spec.bins), np.float32)
    for i, (f, _) in enumerate(files):
        try:
            samples, rate = read_wav(f.read_bytes())
        except DataError as e:
            raise DataError(f"{f}: {e}") from e
        x[i, 0] = features(resample(samples, rate, spec.sample_rate), spec)
    y = np.array([k for _, k in files])
    pre = {"layout": "NCHW", "audio": spec.as_dict(), "source": str(root), "clips": len(files)}
    ds = Dataset(root.name, x, y, classes, pre)
    if groups_from_name:
        ds.groups = np.array([f.name.split("_")[0] for f, _ in files])
    return ds
