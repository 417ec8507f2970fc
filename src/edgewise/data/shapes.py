"""A bundled, offline detection set: shapes composited onto crops of scikit-learn's sample photos.

Each image is a random crop of one of the two photos (so backgrounds are real texture, not flat colour)
with 1 to 3 filled shapes pasted on it: circle, square or triangle, 12-40% of the image wide, in random
colours with a darker outline, never overlapping by more than a third. Boxes are exact, in the image's
pixels. Seeded: the same set every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.data.dataset import Dataset

CLASSES = ["circle", "square", "triangle"]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small


def render(size: int, rng: np.random.Generator, photos: list) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """One image (H, W, 3 uint8) and its boxes [K, 5] (class, x1, y1, x2, y2)."""
    from PIL import Image, ImageDraw

    im = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(min(im.size) // 4, min(im.size) + 1))
    left, top = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
    canvas = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    boxes: list[tuple[float, ...]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            w = float(rng.uniform(0.12, 0.40) * size)
            x1, y1 = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - w))
            box = (x1, y1, x1 + w, y1 + w)
            if all(_overlap(box, b[1:]) < 0.33 for b in boxes):
                break
        else:
            continue
        k = int(rng.integers(len(CLASSES)))
        fill = tuple(int(v) for v in rng.integers(30, 256, 3))
        outline = tuple(v // 3 for v in fill)
        if CLASSES[k] == "circle":
            draw.ellipse(box, fill=fill, outline=outline, width=2)
        elif CLASSES[k] == "square":
            draw.rectangle(box, fill=fill, outline=outline, width=2)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill,
                         outline=outline)
        boxes.append((float(k), *box))
    return np.asarray(canvas, np.uint8), np.array(boxes, np.float32).reshape(-1, 5)


def shapes(size: int = 96, n: int = 800, seed: int = 7) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(im) for im in load_sample_images().images]
    x = np.zeros((n, 3, size, size), np.float32)
    boxes = []
    for i in range(n):
        im, b = render(size, rng, photos)
        x[i] = im.transpose(2, 0, 1) / np.float32(255)
        boxes.append(b)
    pre = {"layout": "NCHW", "color": "RGB", "resize": [size, size], "scale": 1 / 255, "fit": "letterbox"}
    return Dataset(f"shapes:{size}", x, None, list(CLASSES), pre, boxes=boxes)


def write_yolo_folder(ds: Dataset, root: Path, limit: int | None = None) -> Path:
    """Write a detection dataset as a YOLO-format folder (images/*.jpg, labels/*.txt, classes.txt): how a
    user's own labelled set usually arrives, e.g. from an annotation tool's YOLO export."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("\n".join(ds.labels) + "\n")
    assert ds.boxes is not None
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        img = (ds.x[i].transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)
        h, w = img.shape[:2]
        Image.fromarray(img).save(root / "images" / f"{i:05d}.jpg", quality=92)
        lines = [f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                 for c, x1, y1, x2, y2 in ds.boxes[i]]
        (root / "labels" / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return root
