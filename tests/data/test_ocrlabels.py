"""A recognizer's own data as PaddleOCR keeps it: a label file of `image<TAB>text` lines beside the crops."""

from pathlib import Path

import numpy as np
import pytest

from edgewise.data import load, load_splits
from edgewise.errors import DataError


def write_lines(root: Path, texts: list[str], suffix: str = ".jpg", sub: str = "crops") -> Path:
    """Each text printed on a light, slightly noisy strip of its own width, saved under `sub/`; the label file
    beside it, as PaddleOCR's `rec_gt.txt`."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(3)
    (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(texts):
        font = ImageFont.load_default(size=30)
        left, top, right, bottom = font.getbbox(text)
        noise = rng.integers(215, 245, size=(bottom - top + 16, right - left + 16, 3), dtype=np.uint8)
        im = Image.fromarray(noise)
        ImageDraw.Draw(im).text((8 - left, 8 - top), text, font=font, fill=(20, 20, 30))
        name = f"{sub}/line_{i:03d}{suffix}"
        im.save(root / name, quality=95) if suffix == ".jpg" else im.save(root / name)
        lines.append(f"{name}\t{text}")
    (root / "rec_gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "rec_gt.txt"


def test_a_paddleocr_label_file_loads_as_lines_with_their_texts(tmp_path):
    from edgewise.media import ImageSpec, decode, prepare, spec_from_data

    words = ["invoice 2026", "gate A113", "total amount", "hello", "serial number ID-4471", "kWh"] * 4
    labels = write_lines(tmp_path, words)
    ds = load(str(labels))
    assert ds.x.shape == (24, 3, 48, 320) and ds.y is None and ds.texts == words and ds.name == "rec_gt.txt"
    # PaddleOCR's normalisation, and zeros to the right of a short line (a 5-letter word is ~2.5x as wide as tall)
    assert -1.0 <= ds.x.min() and ds.x.max() <= 1.0
    hello = words.index("hello")
    assert not ds.x[hello, :, :, 200:].any() and ds.x[hello, :, :, :60].any()
    # the preprocessing record is what the agent runs on a JPEG: the same tensor
    spec = spec_from_data(ds.preprocessing, ds.sample_shape)
    assert spec == ImageSpec(size=(48, 320), resize="height", scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)
    raw = (tmp_path / "crops" / f"line_{hello:03d}.jpg").read_bytes()
    np.testing.assert_array_equal(prepare(decode(raw, spec), spec).tensor[0], ds.x[hello])
    # a size of the model's own, and texts that follow the samples through the split
    assert load(f"{labels}:32x100").x.shape == (24, 3, 32, 100)
    parts = load_splits(str(labels))
    assert sorted(parts.train.texts + parts.val.texts + parts.test.texts) == sorted(words)


def test_a_bad_label_file_is_a_clear_error_naming_the_line(tmp_path):
    labels = write_lines(tmp_path, ["one", "two", "three"], suffix=".png")
    assert load(str(labels)).texts == ["one", "two", "three"]
    good = labels.read_text()
    cases = {
        good + "crops/missing.png\tfour\n": "rec_gt.txt:4: no image 'crops/missing.png'",
        good + "crops/line_000.png four\n": "rec_gt.txt:4: expected 'image path<TAB>text'",
        good + "notes.pdf\tfour\n": "rec_gt.txt:4: 'notes.pdf' is not a .jpg or .png image",
        "\n\n": "a .txt dataset is a text-line label file",
    }
    for text, message in cases.items():
        labels.write_text(text)
        with pytest.raises(DataError, match=message.replace(".", r"\.")):
            load(str(labels))
    labels.write_bytes(b"crops/line_000.png\t\xff\xfe caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load(str(labels))
    labels.write_text(good)
    with pytest.raises(DataError, match="HEIGHTxWIDTH"):
        load(f"{labels}:48")
    (tmp_path / "crops" / "line_001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="line_001.png"):
        load(str(labels))
