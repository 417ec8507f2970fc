"""Real photographs for calibrating vision models: crops of scikit-learn's two sample photos.

Unlabelled, so a third-party model is scored by agreement with itself. Crops vary in position, scale and
flip; each is resized to SIZE x SIZE and scaled to [0, 1], channels first (RGB), as most exporters expect.
"""

from __future__ import annotations

import numpy as np

from edgewise.data.dataset import Dataset


def photos(size: int = 224, n: int = 500, seed: int = 3) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(im) for im in load_sample_images().images]
    x = np.zeros((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        im = images[i % len(images)]
        side = int(rng.integers(min(im.size) // 3, min(im.size) + 1))
        left, top = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        crop = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        x[i] = (np.asarray(crop, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    pre = {"layout": "NCHW", "color": "RGB", "resize": [size, size], "scale": 1 / 255.0}
    return Dataset(f"photos:{size}", x, None, [], pre)
