"""Realistic inputs for text-direction classifiers and text recognizers: rendered words on crops of real
photographs, each with the text it shows (`Dataset.texts`).

Half of the crops are turned by 180 degrees, so the set has true labels ("0", "180"); `upright=True` keeps
every crop upright, as a recognizer sees lines once the direction classifier has turned them (read upside
down, a recognizer's answer is noise, and scoring an int8 model by how well it repeats that noise says
nothing). Images follow PaddleOCR's preprocessing, through the agent's own code (`edgewise.media`, resize
"height"): height 48, width up to 192 (320 for the recognizer), (x/255 - 0.5) / 0.5, then zeros to the width.
"""

from __future__ import annotations

import numpy as np

from edgewise.data.dataset import Dataset

_WORDS = (
    "edge sensor camera robot model update fleet offline invoice total amount date station gate "
    "temperature pressure warning battery voltage serial number device firmware version label "
    "shipping address order quantity price receipt hello world 2026 11 25 ID-4471 A113 kWh"
).split()


def line_spec(height: int = 48, width: int = 320) -> dict:
    """The preprocessing record of a set of text lines (`media.spec_from_data` reads it): PaddleOCR's."""
    return {"color": "RGB", "layout": "NCHW", "resize": [height, width], "fit": "height", "scale": 1 / 255,
            "mean": [0.5] * 3, "std": [0.5] * 3}


def textlines(n: int = 600, seed: int = 7, height: int = 48, width: int = 192, upright: bool = False) -> Dataset:
    from PIL import Image, ImageDraw, ImageFont
    from sklearn.datasets import load_sample_images

    from edgewise.media import prepare, spec_from_data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(im) for im in load_sample_images().images]
    pre = line_spec(height, width)
    spec = spec_from_data(pre, (3, height, width))
    x = np.zeros((n, 3, height, width), dtype=np.float32)
    y = np.zeros(n, dtype=np.int64)
    texts = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
        texts.append(str(words))
        font = ImageFont.load_default(size=int(rng.integers(22, 36)))
        left, top, right, bottom = font.getbbox(words)
        w, h = right - left + 12, bottom - top + 12
        photo = photos[int(rng.integers(len(photos)))]
        px, py = int(rng.integers(0, photo.width - w)), int(rng.integers(0, photo.height - h))
        crop = photo.crop((px, py, px + w, py + h))
        # Lighten the background so dark text stays readable, as on a label or a sign.
        crop = Image.blend(crop, Image.new("RGB", crop.size, (235, 235, 230)), float(rng.uniform(0.55, 0.85)))
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        ImageDraw.Draw(crop).text((6 - left, 6 - top), words, font=font, fill=ink)
        if i % 2 and not upright:
            crop = crop.rotate(180)
            y[i] = 1
        x[i] = prepare(crop, spec).tensor[0]
    if upright:
        return Dataset("textlines:upright", x, None, [], pre, texts=texts)
    return Dataset("textlines", x, y, ["0", "180"], pre, texts=texts)
