"""Building blocks shared by the zoo's architectures."""

from __future__ import annotations

from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv (1-D or 2-D) + BatchNorm + activation; the unit structured pruning operates on."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, dims: int = 2) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        layers: list[nn.Module] = [conv(cin, cout, k, stride, k // 2, groups=groups, bias=False), bn(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d | nn.Conv1d:
        return self[0]  # type: ignore[return-value]

    @property
    def bn(self) -> nn.BatchNorm2d | nn.BatchNorm1d:
        return self[1]  # type: ignore[return-value]


class SqueezeExcite(nn.Module):
    """Channel attention from MobileNetV3: global pool, bottleneck, hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise kxk, optional SE, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, se: bool, act: type[nn.Module]):
        super().__init__()
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(ConvBNAct(cin, expand, 1, act=act))
        layers.append(ConvBNAct(expand, expand, k, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcite(expand, _make_divisible(expand // 4)))
        layers.append(ConvBNAct(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.block(x)
        return x + y if self.residual else y


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new
