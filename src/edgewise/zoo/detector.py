"""A small one-scale detector that trains in minutes on 2 cores, and its loss.

`tinydet`: a stride-8 CNN (four stride-2 convs would be too coarse for 10-pixel objects at 96x96) whose
head predicts, per grid cell, a box (centre offset and size) and C class scores. The decode is part of the
model, so its ONNX output is the YOLOv8 layout every other edgewise piece reads: [B, 4+C, A], centre x,
centre y, width, height in input pixels, then class probabilities (no objectness). Evaluation, int8
search, the agent's boxes and the C-free device path need nothing detector-specific.

Training assigns each ground-truth box to the cell holding its centre and the two neighbouring cells
nearest to it (YOLOv5's trick: three positives per box, so a centre near a cell edge is not a coin flip);
box loss is 1 - GIoU on positives, class loss is binary cross-entropy over every cell, the positive's
target being its IoU with the box (so a confident score means a good box, which NMS ranks by).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgewise.errors import DataError
from edgewise.zoo.layers import ConvBNAct

STRIDE = 8


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


class TinyDet(nn.Module):
    def __init__(self, shape: tuple[int, ...], classes: int, width: float = 1.0) -> None:
        super().__init__()
        if len(shape) != 3 or shape[1] % STRIDE or shape[2] % STRIDE:
            raise DataError(f"tinydet needs images (C, H, W) with H and W multiples of {STRIDE}; got {shape}")
        c = shape[0]
        c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(64, width)
        self.backbone = nn.Sequential(
            ConvBNAct(c, c1, 3, stride=2), ConvBNAct(c1, c1, 3),
            ConvBNAct(c1, c2, 3, stride=2), ConvBNAct(c2, c2, 3),
            ConvBNAct(c2, c3, 3, stride=2), ConvBNAct(c3, c3, 3), ConvBNAct(c3, c3, 3))
        self.head = nn.Sequential(ConvBNAct(c3, c3, 3), nn.Conv2d(c3, 4 + classes, 1))
        self.classes = classes
        gh, gw = shape[1] // STRIDE, shape[2] // STRIDE
        gy, gx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                indexing="ij")
        self.register_buffer("grid", torch.stack([gx.reshape(-1), gy.reshape(-1)]), persistent=False)  # [2, A]
        with torch.no_grad():  # start unsure: about 1% per class, as RetinaNet's prior
            self.head[1].bias[4:].fill_(-4.6)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 4+C, A]: box offsets and class logits, before decoding."""
        r = self.head(self.backbone(x))
        return r.reshape(r.shape[0], r.shape[1], -1)

    def boxes(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, 4, A] centre x, centre y, width, height in pixels."""
        xy = (self.grid + torch.sigmoid(raw[:, :2]) * 2 - 0.5) * STRIDE
        wh = (torch.sigmoid(raw[:, 2:4]) * 4) ** 2 * STRIDE  # 0..16 cells
        return torch.cat([xy, wh], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw(x)
        return torch.cat([self.boxes(raw), torch.sigmoid(raw[:, 4:])], 1)


def tinydet(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    return TinyDet(shape, classes, width)


def _xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = cxcywh.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalized IoU of matching xyxy rows."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    union = area(a) + area(b) - inter + 1e-7
    iou = inter / union
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def assign(boxes: list[torch.Tensor], gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, anchor index, ground-truth row [class, x1, y1, x2, y2]) of every positive."""
    imgs, anchors, rows = [], [], []
    for i, b in enumerate(boxes):
        if len(b) == 0:
            continue
        c = (b[:, 1:3] + b[:, 3:5]) / 2 / STRIDE  # centres in cells
        cell = c.floor().long()
        frac = c - cell
        step = torch.where(frac < 0.5, -1, 1)  # the nearer neighbour on each axis
        for dx, dy in ((0, 0), (1, 0), (0, 1)):
            gx = (cell[:, 0] + step[:, 0] * dx).clamp(0, gw - 1)
            gy = (cell[:, 1] + step[:, 1] * dy).clamp(0, gh - 1)
            imgs.append(torch.full((len(b),), i))
            anchors.append(gy * gw + gx)
            rows.append(b)
    if not imgs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 5)
    return torch.cat(imgs), torch.cat(anchors), torch.cat(rows)


def loss(model: TinyDet, x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
    raw = model.raw(x)
    b, _, a = raw.shape
    gh, gw = x.shape[2] // STRIDE, x.shape[3] // STRIDE
    img, anc, gt = assign(boxes, gh, gw)
    target = torch.zeros(b, model.classes, a)
    npos = max(len(img), 1)
    box_loss = raw.sum() * 0
    if len(img):
        pred = _xyxy(model.boxes(raw)[img, :, anc])
        iou, g = giou(pred, gt[:, 1:])
        box_loss = (1 - g).sum() / npos
        target[img, gt[:, 0].long(), anc] = iou.detach().clamp(min=0.05).to(target.dtype)
    cls_loss = F.binary_cross_entropy_with_logits(raw[:, 4:], target, reduction="sum") / npos
    return cls_loss + 2.0 * box_loss


def flip(x: torch.Tensor, boxes: list[torch.Tensor], which: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mirror the images `which` selects, and their boxes."""
    w = x.shape[3]
    x = torch.where(which[:, None, None, None], x.flip(3), x)
    out = []
    for b, f in zip(boxes, which.tolist()):
        if f and len(b):
            b = b.clone()
            b[:, [1, 3]] = w - b[:, [3, 1]]
        out.append(b)
    return x, out
