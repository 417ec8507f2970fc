"""Detection data in YOLO format, the layout annotation tools export and people already have:

    DIR/images/*.jpg|png          (subfolders allowed, e.g. images/train)
    DIR/labels/*.txt              same relative path and stem; one line per box: class cx cy w h (0..1)
    DIR/classes.txt or data.yaml  class names (one per line, or `names:` as a list or {index: name})

Each image is decoded with the agent's own code (`edgewise.media`) and letterboxed to SIZE x SIZE, and its
boxes are mapped into those pixels, so training, evaluation and the device see the same geometry.
An image without a label file has no objects (a background image); a malformed line is an error that
names the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.data.imagefolder import MAX_IMAGES, SUFFIXES, prepared_images, seeded_sample
from edgewise.errors import DataError


def is_yolo_folder(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def class_names(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        names = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    elif (root / "data.yaml").is_file():
        import yaml

        try:
            doc = yaml.safe_load((root / "data.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise DataError(f"{root / 'data.yaml'}: not valid YAML ({e})") from e
        raw = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(raw, dict):
            names = [str(raw[k]) for k in sorted(raw, key=int)]
        elif isinstance(raw, list):
            names = [str(v) for v in raw]
        else:
            raise DataError(f"{root / 'data.yaml'} has no `names:` list of class names")
    else:
        raise DataError(f"{root} has images/ and labels/ but no class names: add classes.txt (one name per line)")
    if not names:
        raise DataError(f"{root}: the class names file is empty")
    return names


def _read_labels(path: Path, classes: int) -> np.ndarray:
    """Normalized (class, cx, cy, w, h) rows of one label file."""
    rows = []
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                k, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
            except (ValueError, TypeError) as e:
                raise DataError(f"{path}:{n}: expected `class cx cy w h`, got {line.strip()[:60]!r}") from e
            if len(parts) != 5:
                raise DataError(f"{path}:{n}: expected 5 values (class cx cy w h); segmentation polygons are not "
                                "read here")
            if not 0 <= k < classes:
                raise DataError(f"{path}:{n}: class {k} is not one of the {classes} names")
            if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
                raise DataError(f"{path}:{n}: box values must be normalized to 0..1, got {line.strip()[:60]!r}")
            rows.append((k, cx, cy, w, h))
    return np.array(rows, np.float64).reshape(-1, 5)


def yolo_folder(root: Path, size: int = 320, max_images: int = MAX_IMAGES, seed: int = 0) -> Dataset:
    from edgewise.media import ImageSpec

    root = Path(root)
    names = class_names(root)
    files = sorted(f for f in (root / "images").rglob("*") if f.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{root / 'images'} holds no .jpg/.png images")
    total = len(files)
    files = seeded_sample(files, max_images, seed)
    spec = ImageSpec(size=(size, size), resize="letterbox")
    x = np.zeros((len(files), 3, size, size), np.float32)
    boxes = []
    for i, (f, p) in enumerate(zip(files, prepared_images(files, spec))):
        x[i] = p.tensor[0]
        lab = _read_labels((root / "labels" / f.relative_to(root / "images")).with_suffix(".txt"), len(names))
        h0, w0 = p.original
        cx, cy, w, h = lab[:, 1] * w0, lab[:, 2] * h0, lab[:, 3] * w0, lab[:, 4] * h0
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]] * p.ratio[1] + p.offset[1]
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]] * p.ratio[0] + p.offset[0]
        boxes.append(np.concatenate([lab[:, :1], xyxy], axis=1).astype(np.float32))
    pre = {"layout": "NCHW", "color": "RGB", "resize": [size, size], "scale": 1 / 255, "fit": "letterbox",
           "source": str(root), "images": len(files), "images_found": total}
    return Dataset(root.name, x, None, names, pre, boxes=boxes)
