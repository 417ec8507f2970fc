"""Images in: decode a JPEG/PNG, bounded, then the bundle's declared preprocessing turns it into the model's
tensor. NumPy and Pillow only, so a device runs exactly what training and evaluation ran.

The declaration (manifest `preprocessing["image"]`):
    size: [H, W]            the model's input size
    resize: "letterbox"     keep the aspect ratio, pad with `pad` (as YOLO exports expect), "stretch", or
            "height"        keep the aspect ratio at the model's height, as wide as that makes it up to the
                            model's width, the rest zero after normalisation (PaddleOCR's text recognizer)
    color: "RGB" | "BGR" | "L"
    scale: 1/255            multiply pixel values (0..255) by this
    mean, std: [..] | None  then (x - mean) / std per channel
    layout: "NCHW" | "NHWC"
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgewise.errors import DataError

MAX_PIXELS = 40_000_000  # a 40 MP photo decodes to 120 MB of RGB; anything larger is refused before decoding
RESIZES = ("letterbox", "stretch", "height")
COLORS = ("RGB", "BGR", "L")


@dataclass(frozen=True)
class ImageSpec:
    size: tuple[int, int]
    resize: str = "letterbox"
    color: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"
    pad: int = 114

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise DataError(f"image size must be [height, width], got {list(self.size)}")
        if self.resize not in RESIZES or self.color not in COLORS or self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"image preprocessing: resize one of {RESIZES}, color one of {COLORS}, layout NCHW or "
                            f"NHWC; got {self.resize}, {self.color}, {self.layout}")

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        known = set(cls.__dataclass_fields__)
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["size"] = tuple(int(v) for v in kw["size"])
            for k in ("mean", "std"):
                if kw.get(k) is not None:
                    kw[k] = tuple(float(v) for v in kw[k])
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"image preprocessing is malformed ({e})") from e


@dataclass
class Prepared:
    """A model-ready tensor, and how to map its coordinates back to the original image."""

    tensor: np.ndarray
    original: tuple[int, int]  # (height, width)
    ratio: tuple[float, float] = (1.0, 1.0)  # model pixels per original pixel (y, x)
    offset: tuple[float, float] = (0.0, 0.0)  # padding added before the image (top, left)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes in model-input pixels -> boxes in the original image's pixels, clipped to it."""
        out = xyxy.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.offset[1]) / self.ratio[1]
        out[:, [1, 3]] = (out[:, [1, 3]] - self.offset[0]) / self.ratio[0]
        h, w = self.original
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out


def fitted_size(w0: int, h0: int, spec: ImageSpec) -> tuple[int, int]:
    """(width, height) the picture is resized to before any padding, as `prepare` does it."""
    th, tw = spec.size
    if spec.resize == "stretch":
        return tw, th
    if spec.resize == "height":
        return min(tw, math.ceil(th * w0 / h0)), th
    r = min(th / h0, tw / w0)
    return max(1, round(w0 * r)), max(1, round(h0 * r))


def decode(raw: bytes, fit: ImageSpec | None = None) -> Any:
    """A Pillow image from JPEG/PNG bytes: the size is read from the header and bounded before any pixel is
    decoded; truncated, empty or non-image bodies are a DataError.

    With `fit` (the preprocessing it is decoded for), a JPEG much larger than the model's input is decoded
    at a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8, never below the size it will be resized to):
    several times faster, and the same for training data and requests since both decode through here.
    The original size stays in `im.info["original_size"]`, so boxes map back to the original pixels."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise DataError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the two decoders we accept are tried: no other plugin (some need optional packages) runs.
            im = Image.open(io.BytesIO(raw), formats=("JPEG", "PNG"))
            w, h = im.size
            if w < 1 or h < 1:
                raise DataError(f"the image is {w}x{h} pixels")
            if w * h > MAX_PIXELS:
                raise DataError(f"the image is {w}x{h} pixels, over the {MAX_PIXELS:,} this device decodes")
            if fit is not None and im.format == "JPEG":
                im.draft("L" if fit.color == "L" else "RGB", fitted_size(w, h, fit))
            im.load()
            im.info["original_size"] = (w, h)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise DataError(f"not a readable JPEG or PNG image ({type(e).__name__}: {str(e)[:120]})") from e
    return im


def prepare(im: Any, spec: ImageSpec) -> Prepared:
    """The declared preprocessing, as training and evaluation did it (with Pillow's bilinear resize)."""
    from PIL import Image

    w0, h0 = im.info.get("original_size", im.size)  # a reduced-scale decode keeps the original's size
    im = im.convert("L" if spec.color == "L" else "RGB")
    th, tw = spec.size
    if spec.resize == "stretch":
        canvas = im.resize((tw, th), Image.BILINEAR)
        ratio, offset = (th / h0, tw / w0), (0.0, 0.0)
    elif spec.resize == "height":  # padded below, after normalisation
        nw, _ = fitted_size(w0, h0, spec)
        canvas = im.resize((nw, th), Image.BILINEAR)
        ratio, offset = (th / h0, nw / w0), (0.0, 0.0)
    else:
        nw, nh = fitted_size(w0, h0, spec)
        top, left = (th - nh) // 2, (tw - nw) // 2
        canvas = Image.new(im.mode, (tw, th), spec.pad if im.mode == "L" else (spec.pad,) * 3)
        canvas.paste(im.resize((nw, nh), Image.BILINEAR), (left, top))
        ratio, offset = (nh / h0, nw / w0), (float(top), float(left))
    x = np.asarray(canvas, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.color == "BGR":
        x = x[:, :, ::-1]
    x = x * np.float32(spec.scale)
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, np.float32)
    if spec.std is not None:
        x = x / np.asarray(spec.std, np.float32)
    if x.shape[1] < tw:  # "height": zeros to the model's width
        x = np.concatenate([x, np.zeros((th, tw - x.shape[1], x.shape[2]), np.float32)], axis=1)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return Prepared(np.ascontiguousarray(x[None], dtype=np.float32), (h0, w0), ratio, offset)


def spec_from_data(preprocessing: dict[str, Any], sample_shape: tuple[int, ...]) -> ImageSpec | None:
    """The image preprocessing a dataset's own record implies, when it is one of edgewise's image sets
    (RGB in [0, 1], channels first, resized to a square: `photos`; or normalised text lines, `textlines`)."""
    if preprocessing.get("color") in COLORS and preprocessing.get("layout") in ("NCHW", "NHWC") and len(sample_shape) == 3:
        size = preprocessing.get("resize") or list(sample_shape[1:] if preprocessing["layout"] == "NCHW" else sample_shape[:2])
        norm = {k: tuple(float(v) for v in preprocessing[k]) for k in ("mean", "std") if preprocessing.get(k)}
        return ImageSpec(size=(int(size[0]), int(size[1])), resize=preprocessing.get("fit", "stretch"),
                         color=preprocessing["color"], scale=float(preprocessing.get("scale", 1 / 255)),
                         layout=preprocessing["layout"], **norm)
    return None


__all__ = ["MAX_PIXELS", "ImageSpec", "Prepared", "decode", "fitted_size", "prepare", "spec_from_data"]
