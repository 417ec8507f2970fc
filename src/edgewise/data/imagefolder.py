"""Images from a folder, in the layout people already have: one subfolder of JPEG/PNG files per class
(ImageFolder / Edge Impulse export), or a flat folder of unlabelled images for calibration.

Each image is decoded with the same code the agent runs (`edgewise.media`), stretched to SIZE x SIZE,
RGB in [0, 1], channels first; class names are the subfolder names, kept end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_IMAGES = 1000  # a seeded, stratified sample beyond this: calibration and evaluation need hundreds


def image_folder(root: Path, size: int = 96, max_images: int = MAX_IMAGES, seed: int = 0) -> Dataset:
    from edgewise.media import ImageSpec, decode, prepare

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
    if total > max_images:
        rng = np.random.default_rng(seed)
        files = [files[i] for i in sorted(rng.choice(total, max_images, replace=False))]
    spec = ImageSpec(size=(size, size), resize="stretch")
    x = np.zeros((len(files), 3, size, size), np.float32)
    for i, (f, _) in enumerate(files):
        try:
            x[i] = prepare(decode(f.read_bytes(), spec), spec).tensor[0]
        except DataError as e:
            raise DataError(f"{f}: {e}") from e
    y = np.array([k for _, k in files]) if classes else None
    pre = {"layout": "NCHW", "color": "RGB", "resize": [size, size], "scale": 1 / 255, "fit": "stretch",
           "source": str(root), "images": len(files), "images_found": total}
    return Dataset(root.name, x, y, classes, pre)
