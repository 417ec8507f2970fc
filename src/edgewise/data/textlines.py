"""Realistic inputs for text-direction classifiers and text recognizers: rendered words on crops of real
photographs, each with the text it shows (`Dataset.texts`).

Half of the crops are turned by 180 degrees, so the set has true labels ("0", "180"); `upright=True` keeps
every crop upright, as a recognizer sees lines once the direction classifier has turned them (read upside
down, a recognizer's answer is noise, and scoring an int8 model by how well it repeats that noise says
nothing). Images follow PaddleOCR's preprocessing: height 48, width up to 192 (right-padded),
(x/255 - 0.5) / 0.5.
"""

from __future__ import annotations

import numpy as np

from edgewise.data.dataset import Dataset

_WORDS = (
    "edge sensor camera robot model update fleet offline invoice total amount date station gate "
    "temperature pressure warning battery voltage serial number device firmware version label "
    "shipping address order quantity price receipt hello world 2026 11 25 ID-4471 A113 kWh"
).split()


def textlines(n: int = 600, seed: int = 7, height: int = 48, width: int = 192, upright: bool = False) -> Dataset:
    from PIL import Image, ImageDraw, ImageFont
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(im) for im in load_sample_images().images]
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
        resized_w = min(width, int(np.ceil(height * crop.width / crop.height)))
        arr = np.asarray(crop.resize((resized_w, height), Image.BILINEAR), dtype=np.float32)
        x[i, :, :, :resized_w] = ((arr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    pre = {"layout": "NCHW", "resize_height": height, "max_width": width, "scale": 1 / 127.5, "offset": -1.0}
    if upright:
        return Dataset("textlines:upright", x, None, [], pre, texts=texts)
    return Dataset("textlines", x, y, ["0", "180"], pre, texts=texts)
