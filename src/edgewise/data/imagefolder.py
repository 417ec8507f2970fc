"""Images from a folder, in the layout people already have: one subfolder of JPEG/PNG files per class
(ImageFolder / Edge Impulse export), or a flat folder of unlabelled images for calibration.

Each image is decoded with the same code the agent runs (`edgewise.media`), stretched to SIZE x SIZE,
RGB in [0, 1], channels first; class names are the subfolder names, kept end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png")
T = TypeVar("T")
MAX_IMAGES = 1000  # a seeded, stratified sample beyond this: calibration and evaluation need hundreds


def seeded_sample(items: list[T], limit: int, seed: int) -> list[T]:
    """At most `limit` of `items`, a seeded sample in their original order."""
    if len(items) <= limit:
        return items
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), limit, replace=False))]


def prepared_images(files: list[Path], spec: Any) -> Iterator[Any]:
    """Each file decoded and prepared as `spec` declares (the agent's own code); a bad file is a
    DataError naming it."""
    from edgewise.media import decode, prepare

    for f in files:
        try:
            yield prepare(decode(f.read_bytes(), spec), spec)
        except DataError as e:
            raise DataError(f"{f}: {e}") from e


def image_folder(root: Path, size: int = 96, max_images: int = MAX_IMAGES, seed: int = 0) -> Dataset:
    from edgewise.media import ImageSpec

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
                 if f.suffix.lower() in SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in SUFFIXES]
    if not files:
        raise DataError(f"{root} holds no .jpg/.png images (one subfolder per class, or images directly)")
    total = len(files)
    files = seeded_sample(files, max_images, seed)
    spec = ImageSpec(size=(size, size), resize="stretch")
    x = np.stack([p.tensor[0] for p in prepared_images([f for f, _ in files], spec)])
    y = np.array([k for _, k in files]) if classes else None
    pre = {"layout": "NCHW", "color": "RGB", "resize": [size, size], "scale": 1 / 255, "fit": "stretch",
           "source": str(root), "images": len(files), "images_found": total}
    return Dataset(root.name, x, y, classes, pre)
