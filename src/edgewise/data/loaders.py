"""Loaders for datasets that ship inside installed packages, and for the user's own files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset, Splits, split
from edgewise.errors import DataError

BUNDLED = {
    "digits": "scikit-learn handwritten digits, 1x8x8 grey images, 10 classes (append :SIZE to upscale)",
    "basicmotions": "aeon BasicMotions, 6-axis smartwatch accelerometer+gyroscope, 6x100, 4 classes",
    "gunpoint": "aeon GunPoint, a hand's x position drawing a gun or pointing, 1x150, 2 classes, 200 series",
    "arrowhead": "aeon ArrowHead, arrowhead outlines as 1-D series, 1x251, 3 classes, 211 series",
    "textlines": "rendered text crops on real photo backgrounds, 3x48x192, upright (0) vs rotated (180), each "
                 "with its text (textlines:upright: all upright, 3x48x320, for text recognizers)",
    "photos": "crops of scikit-learn's sample photos, 3xSIZExSIZE RGB in [0, 1], unlabelled (photos:SIZE, "
              "default 224): calibration data for third-party vision models",
    "keywords": "keyword spotting: 10 words + unknown + silence, synthesized with espeak-ng on first use and "
                "cached, 1 s at 16 kHz -> 49x40 log-mel; test split = 4 held-out voices",
    "vibration": "predictive maintenance: a motor's 3-axis accelerometer at 1 kHz, 3x1000 windows, normal "
                 "running and 5 faults (imbalance, misalignment, looseness, bearing races), synthesized; "
                 "test split = 6 unseen normal runs and every fault run",
    "textscenes": "the photos crops with 1-3 words printed on each, 3xSIZExSIZE (textscenes:SIZE, default 160), "
                  "unlabelled: for text detectors",
    "shapes": "detection: circles, squares and triangles composited onto the sample photos, with boxes, "
              "3xSIZExSIZE (shapes:SIZE, default 96), 800 images",
}


def _digits(size: int | None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    name = "digits"
    if size is not None and size != 8:
        import torch
        import torch.nn.functional as F

        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()
        name = f"digits:{size}"
    pre = {"scale": 1.0 / 16.0, "layout": "NCHW", "resize": [x.shape[2], x.shape[3]]}
    return Dataset(name, x, d.target, [str(i) for i in range(10)], pre)


AEON_SETS = {  # bundled name: (aeon loader, channel names, class names for the set's class codes)
    "basicmotions": ("load_basic_motions", ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"], {}),
    "gunpoint": ("load_gunpoint", ["x"], {"1": "gun", "2": "point"}),
    "arrowhead": ("load_arrow_head", ["outline"], {"0": "avonlea", "1": "clovis", "2": "mix"}),
}


def _aeon(name: str) -> Dataset:
    """A classification set aeon ships in its wheel: its train and test series pooled (the split is ours)."""
    import aeon.datasets

    loader, channels, names = AEON_SETS[name]
    xs, ys = zip(*(getattr(aeon.datasets, loader)(split=s) for s in ("train", "test")))
    x = np.concatenate(xs).astype(np.float32)
    y_str = np.concatenate(ys)
    labels = sorted(set(y_str.tolist()))
    y = np.array([labels.index(v) for v in y_str])
    return Dataset(name, x, y, [names.get(str(v), str(v)) for v in labels],
                   {"layout": "NCT", "channels": channels, "standardize": True})


def _npz(path: Path) -> Dataset:
    """`x` (and optional `y`) for a single-input model; otherwise one array per model input name, samples
    stacked on a new leading axis (sample i is {name: arr[name][i]})."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not f.files:
                raise DataError(f"{path}: .npz holds no arrays")
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    y = arrays.pop("y", None)
    if "x" in arrays and len(arrays) == 1:
        return _user_dataset(path, arrays["x"], y)
    for k, v in arrays.items():
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_) or v.ndim == 0:
            raise DataError(f"{path}: input {k!r} must be a numeric or bool array with samples on its first axis, "
                            f"got {v.dtype} of shape {v.shape}")
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise DataError(f"{path}: input {k!r} holds NaN or infinite values")
    base = _user_dataset(path, np.zeros((len(next(iter(arrays.values()))), 1), np.float32), y)
    return Dataset(base.name, base.x, base.y, base.labels, base.preprocessing, arrays)


def _csv(path: Path) -> Dataset:
    try:
        header = path.read_text().splitlines()[0].split(",")
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise DataError(f"{path}: not a readable CSV file") from e
    has_header = any(not _is_number(h) for h in header)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: CSV must be numeric ({e})") from e
    names = [h.strip().lower() for h in header] if has_header else []
    label_col = next((i for i, n in enumerate(names) if n in ("label", "y", "target", "class")), None)
    if label_col is None:
        return _windowed(_user_dataset(path, table, None), [h.strip() for h in header] if has_header else [])
    y = table[:, label_col]
    x = np.delete(table, label_col, axis=1)
    feature_names = [h.strip() for i, h in enumerate(header) if i != label_col]
    return _windowed(_user_dataset(path, x, y), feature_names)


def _windowed(ds: Dataset, names: list[str]) -> Dataset:
    """A pre-windowed table, one row per window with columns CHANNEL_INDEX (ax_0 ... ax_127, ay_0 ...,
    or ax0 ..., indices from 0 or 1): reshaped to (channels, time) samples so sequence models take it,
    with the channel names recorded."""
    import re

    parts = [re.fullmatch(r"(.*?[A-Za-z])_?(\d+)", n) for n in names]
    if len(names) < 8 or not all(parts):
        return ds
    channels = list(dict.fromkeys(m.group(1) for m in parts if m))
    t = len(names) // len(channels)
    layouts = [[f"{c}{sep}{i}" for c in channels for i in range(start, start + t)]
               for sep in ("_", "") for start in (0, 1)]
    if t < 4 or names not in layouts:
        return ds
    x = ds.x.reshape(len(ds.x), len(channels), t)
    return Dataset(ds.name, x, ds.y, ds.labels, {**ds.preprocessing, "layout": "NCT", "channels": channels})


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _user_dataset(path: Path, x: np.ndarray, y: np.ndarray | None) -> Dataset:
    if x.size == 0:
        raise DataError(f"{path}: dataset is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: x must be numeric, got {x.dtype}")
    if x.ndim == 1:
        x = x[:, None]
    if not np.isfinite(x).all():
        raise DataError(f"{path}: x holds NaN or infinite values")
    labels: list[str] = []
    if y is not None:
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: {x.shape[0]} samples in x but {y.shape[0]} labels in y")
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{path}: labels y must be integers")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise DataError(f"{path}: labels y must be >= 0")
        labels = [str(i) for i in range(int(y.max()) + 1)]
    return Dataset(path.stem, x.astype(np.float32), y, labels, {"source": str(path)})


def load(spec: str, size: int | None = None) -> Dataset:
    """A bundled name (`digits`, `digits:64`, `basicmotions`, `textlines`, `photos:SIZE`, `textscenes:SIZE`,
    `shapes:SIZE`), a
    `.npz` / `.csv` path, a folder of images (`DIR` or `DIR:SIZE`): one subfolder per class, or YOLO
    format (images/, labels/, classes.txt) for detection; or a text-line label file (`rec_gt.txt` or
    `rec_gt.txt:HxW`: `image<TAB>text` per line, PaddleOCR's format, for recognizers). An image set given without a SIZE loads at `size`
    (the model's input size, when the caller knows it), else at its own default."""
    name, _, arg = spec.partition(":")
    if name == "digits":
        if arg and not arg.isdigit():
            raise DataError(f"digits size must be an integer, got {arg!r}")
        return _digits(int(arg) if arg else None)
    if name in AEON_SETS:
        return _aeon(name)
    if name == "textscenes":
        from edgewise.data.textscenes import textscenes

        if arg and not arg.isdigit():
            raise DataError(f"textscenes size must be an integer, got {arg!r}")
        return textscenes(int(arg) if arg else size or 160)
    if name == "photos":
        from edgewise.data.photos import photos

        if arg and not arg.isdigit():
            raise DataError(f"photos size must be an integer, got {arg!r}")
        return photos(int(arg) if arg else size or 224)
    if name == "keywords":
        from edgewise.data.keywords import keywords

        return keywords()
    if name == "vibration":
        from edgewise.data.vibration import vibration

        return vibration()
    if name == "shapes":
        from edgewise.data.shapes import shapes

        if arg and not arg.isdigit():
            raise DataError(f"shapes size must be an integer, got {arg!r}")
        return shapes(int(arg) if arg else size or 96)
    if name == "textlines":
        from edgewise.data.textlines import textlines

        upright, _, count = arg.partition(":") if arg.startswith("upright") else ("", "", arg)
        if (count and not count.isdigit()) or upright not in ("", "upright"):
            raise DataError(f"textlines takes :N, :upright or :upright:N, got {arg!r}")
        if upright:  # PaddleOCR's recognizer input is 48 x 320: narrower squeezes a 3-word line (CER 11% vs 1%)
            return textlines(int(count) if count else 600, width=320, upright=True)
        return textlines(int(count) if count else 600)
    path = Path(spec)
    head, _, tail = spec.rpartition(":")
    if head.lower().endswith(".csv") and Path(head).is_file() and "=" in tail:  # log.csv:window=2000,...
        from edgewise.data.sensorlog import sensor_log

        return sensor_log(Path(head), tail)
    if head.lower().endswith(".txt") and Path(head).is_file():  # rec_gt.txt:32x100
        from edgewise.data.ocrlabels import ocr_labels, parse_size

        return ocr_labels(Path(head), parse_size(tail))
    if path.suffix.lower() == ".txt" and path.is_file():
        from edgewise.data.ocrlabels import is_ocr_labels, ocr_labels

        if not is_ocr_labels(path):
            raise DataError(f"{path}: a .txt dataset is a text-line label file, one 'image path<TAB>text' per line "
                            "(PaddleOCR's format)")
        return ocr_labels(path)
    if tail.isdigit() and Path(head).is_dir():
        path = Path(head)
    if path.is_dir():
        from edgewise.data.audiofolder import audio_folder, is_audio_folder
        from edgewise.data.imagefolder import image_folder
        from edgewise.data.yolo import is_yolo_folder, yolo_folder

        given = int(tail) if tail.isdigit() and path != Path(spec) else size
        if is_audio_folder(path):
            return audio_folder(path)
        if is_yolo_folder(path):
            return yolo_folder(path, given or 320)
        return image_folder(path, given or 96)
    if path.suffix.lower() not in (".npz", ".csv"):
        known = ", ".join(BUNDLED)
        raise DataError(f"unknown dataset {spec!r}: use one of {known}, a .npz / .csv file, a folder of images, "
                        "or a text-line label file (.txt)")
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    if path.suffix.lower() == ".csv":
        from edgewise.data.sensorlog import is_sensor_log, sensor_log

        return sensor_log(path) if is_sensor_log(path) else _csv(path)
    return _npz(path)


def load_splits(spec: str, seed: int = 0, size: int | None = None) -> Splits:
    """Load and split; per-channel standardisation uses train statistics only (no leakage). `size`: what
    an image set without its own SIZE loads at (`load`)."""
    ds = load(spec, size)
    parts = split(ds, seed=seed)
    if ds.preprocessing.get("standardize"):
        axes = tuple(i for i in range(parts.train.x.ndim) if i != 1)
        mean = parts.train.x.mean(axis=axes, keepdims=True)
        std = parts.train.x.std(axis=axes, keepdims=True) + 1e-6
        for part in (parts.train, parts.val, parts.test):
            part.x = ((part.x - mean) / std).astype(np.float32)
            part.preprocessing = {**ds.preprocessing, "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
    return parts
