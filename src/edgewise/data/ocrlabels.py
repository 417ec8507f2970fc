"""Text-line images with the text each shows, kept as PaddleOCR keeps its recognition sets: a label file with
one line per image, `image path<TAB>text`, the paths relative to the label file's folder.

Every image goes through the agent's own decoding and preprocessing (`edgewise.media`, resize "height":
PaddleOCR's 48 x 320 unless `FILE:HxW` says otherwise), so a device reads a photo of a line as evaluation
did. The texts become `Dataset.texts`: a recognizer that knows its alphabet is scored against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.data.imagefolder import SUFFIXES, prepared_images, seeded_sample
from edgewise.data.textlines import line_spec
from edgewise.errors import DataError

MAX_LINES = 2000  # a seeded sample beyond this: calibration and scoring need hundreds
HEIGHT, WIDTH = 48, 320  # PaddleOCR's recognizer input (PP-OCRv3 and v4)


def is_ocr_labels(path: Path) -> bool:
    """A .txt file whose first non-blank line is `something<TAB>something`."""
    if path.suffix.lower() != ".txt" or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
    except OSError:
        return False
    return "\t" in first


def parse_size(arg: str) -> tuple[int, int]:
    """`HxW` (e.g. 32x100) -> (H, W)."""
    h, sep, w = arg.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise DataError(f"a label file's size is HEIGHTxWIDTH (e.g. 48x320), got {arg!r}")
    return int(h), int(w)


def read_labels(path: Path) -> list[tuple[Path, str]]:
    """(image, text) per line; a line that is not `path<TAB>text`, or names a missing image, is a DataError
    with its line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rel, tab, words = line.partition("\t")
        if not tab or not rel.strip():
            raise DataError(f"{path}:{n}: expected 'image path<TAB>text' (PaddleOCR's label format), got {line[:60]!r}")
        image = path.parent / rel.strip()
        if image.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}:{n}: {rel.strip()!r} is not a .jpg or .png image")
        if not image.is_file():
            raise DataError(f"{path}:{n}: no image {rel.strip()!r} (paths are relative to {path.parent})")
        entries.append((image, words))
    if not entries:
        raise DataError(f"{path} lists no images")
    return entries


def ocr_labels(path: Path, size: tuple[int, int] = (HEIGHT, WIDTH), max_lines: int = MAX_LINES,
               seed: int = 0) -> Dataset:
    from edgewise.media import spec_from_data

    entries = seeded_sample(read_labels(path), max_lines, seed)
    pre = line_spec(*size)
    spec = spec_from_data(pre, (3, *size))
    x = np.stack([p.tensor[0] for p in prepared_images([f for f, _ in entries], spec)])
    return Dataset(path.name, x, None, [], pre, texts=[t for _, t in entries])
