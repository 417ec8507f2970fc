"""Scenes with text in them, for text detectors: the sample-photo crops of `photos`, each with one to three
words printed on a light patch, as on a label or a sign.

A text detector shown `photos` alone finds nothing (PP-OCRv4's marks no pixel above 0.5 on any of them), so
agreement with it would be measured on empty maps. Unlabelled, like `photos`.
"""

from __future__ import annotations

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.data.photos import photos
from edgewise.data.textlines import _WORDS


def textscenes(size: int = 160, n: int = 500, seed: int = 5) -> Dataset:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    base = photos(size, n=n, seed=seed)
    x = np.empty_like(base.x)
    for i in range(n):
        im = Image.fromarray((base.x[i].transpose(1, 2, 0) * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            word = str(rng.choice(_WORDS))
            font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.08, 0.16))))
            left, top, right, bottom = font.getbbox(word)
            w, h = right - left, bottom - top
            x0 = int(rng.integers(2, max(3, size - w - 2)))
            y0 = int(rng.integers(2, max(3, size - h - 2)))
            paper = tuple(int(v) for v in rng.integers(200, 250, size=3))
            draw.rectangle((x0 - 3, y0 - 3, x0 + w + 3, y0 + h + 3), fill=paper)
            draw.text((x0 - left, y0 - top), word, font=font, fill=tuple(int(v) for v in rng.integers(0, 70, size=3)))
        x[i] = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return Dataset(f"textscenes:{size}", x, None, [], dict(base.preprocessing))
