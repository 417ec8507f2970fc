"""The zoo: small architectures for images and sensor series, sized by a width multiplier."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgewise.errors import DataError, ModelError
from edgewise.zoo.layers import ConvBNAct, InvertedResidual, _make_divisible


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def mlp(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    n = 1
    for d in shape:
        n *= d
    h1, h2 = _ch(128, width), _ch(64, width)
    # A feature vector needs no Flatten (and a graph that starts with one keeps its input in float when
    # quantized); Identity keeps the layer indices, so checkpoints load either way.
    first = nn.Flatten() if len(shape) > 1 else nn.Identity()
    return nn.Sequential(first, nn.Linear(n, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, classes))


def _image_shape(shape: tuple[int, ...], arch: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise DataError(f"{arch} needs image samples (C, H, W); got sample shape {shape}")
    return shape  # type: ignore[return-value]


def cnn(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """Three conv stages; 2x2 max-pool after a stage while the feature map is at least 8 wide."""
    c, h, _ = _image_shape(shape, "cnn")
    layers: list[nn.Module] = []
    for cout in (_ch(16, width), _ch(32, width), _ch(64, width)):
        layers.append(ConvBNAct(c, cout, 3))
        if h >= 8:
            layers.append(nn.MaxPool2d(2))
            h //= 2
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def dscnn(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """Depthwise-separable CNN (the keyword-spotting classic): a stem conv, then dw3x3 + pw1x1 blocks."""
    c, h, _ = _image_shape(shape, "dscnn")
    stem = _ch(32, width)
    layers: list[nn.Module] = [ConvBNAct(c, stem, 3, stride=2 if h >= 16 else 1)]
    c = stem
    for cout in (_ch(32, width), _ch(64, width), _ch(64, width)):
        layers += [ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, cout, 1)]
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def cnn1d(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """1-D CNN for multichannel sensor series (C, T): three conv stages with pooling, global average."""
    if len(shape) != 2:
        raise DataError(f"cnn1d needs series samples (channels, time); got sample shape {shape}")
    c, t = shape
    layers: list[nn.Module] = []
    for cout in (_ch(16, width), _ch(32, width), _ch(32, width)):
        layers.append(ConvBNAct(c, cout, 5, dims=1))
        if t >= 8:
            layers.append(nn.MaxPool1d(2))
            t //= 2
        c = cout
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


# MobileNetV3-small (Howard et al. 2019, table 2): kernel, expansion, out, SE, activation, stride.
_MNV3_SMALL = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]


def mobilenetv3_small(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """MobileNetV3-small; strides are dropped once the feature map is 2 wide, so 8x8 inputs work too."""
    c, h, _ = _image_shape(shape, "mobilenetv3-small")
    acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
    stem = _make_divisible(16 * width)
    layers: list[nn.Module] = [ConvBNAct(c, stem, 3, stride=2 if h >= 32 else 1, act=nn.Hardswish)]
    h = h // 2 if h >= 32 else h
    c = stem
    for k, exp, out, se, act, stride in _MNV3_SMALL:
        s = stride if h >= 4 else 1
        h = (h + s - 1) // s
        cout = _make_divisible(out * width)
        layers.append(InvertedResidual(c, _make_divisible(exp * width), cout, k, s, se, acts[act]))
        c = cout
    last = _make_divisible(576 * width)
    head = _make_divisible(1024 * width)
    layers += [ConvBNAct(c, last, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head, classes)]
    return nn.Sequential(*layers)


def _tinydet(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    from edgewise.zoo.detector import tinydet

    return tinydet(shape, classes, width)


def _autoencoder(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    from edgewise.zoo.anomaly import autoencoder

    return autoencoder(shape, classes, width)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "dscnn": dscnn,
    "cnn1d": cnn1d,
    "mobilenetv3-small": mobilenetv3_small,
    "tinydet": _tinydet,
    "autoencoder": _autoencoder,
}
DETECTORS = ("tinydet",)  # trained on boxes; their output is the YOLOv8 layout [B, 4+C, A]
ANOMALY = ("autoencoder",)  # trained on normal data only; the output is a residual to score (media.anomaly)


def build(name: str, shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown model {name!r}: the zoo has {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](tuple(shape), classes, width)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
