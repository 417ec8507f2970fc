"""Detector outputs as boxes: decode YOLO-style heads and boxes+scores heads, class-aware NMS, and mAP@0.5
of one model's boxes against another's. NumPy only, so a device can run the same decode.

A YOLO-style head is one tensor [4+C, A] per image (v8 and later: cx, cy, w, h, then C class scores,
no objectness), or its transpose [A, 4+C]. A boxes+scores head is two tensors: boxes [A, 4] as
x1, y1, x2, y2 and scores [A, C] (or [C, A]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONF = 0.25
IOU = 0.45
MAX_DET = 300
EVAL_CONF = 0.001  # against ground truth, mAP integrates the whole precision-recall curve (as COCO does)
EVAL_MAX_DET = 100


@dataclass
class Boxes:
    """Detections of one image: xyxy [K, 4], score [K], class [K]."""

    xyxy: np.ndarray
    score: np.ndarray
    cls: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


@dataclass(frozen=True)
class Layout:
    """Where a detector's boxes are: output indices and orientation, found once from the outputs' shapes."""

    kind: str  # "yolo" | "boxes+scores"
    boxes: int  # output index of the YOLO head, or of the boxes
    scores: int = -1  # boxes+scores: output index of the scores
    anchors_last: bool = True  # YOLO [4+C, A] / scores [C, A]

    def describe(self) -> str:
        if self.kind == "yolo":
            return f"YOLO-style head in output {self.boxes} ({'[4+C, A]' if self.anchors_last else '[A, 4+C]'})"
        return f"boxes in output {self.boxes}, scores in output {self.scores}"


def squeeze_lead(a: np.ndarray, rank: int) -> np.ndarray:
    """Drop leading size-1 axes (a batch of one) until `rank` axes remain."""
    while a.ndim > rank and a.shape[0] == 1:
        a = a[0]
    return a


def _yolo_like(a: np.ndarray) -> bool | None:
    """Per-image array of a YOLO head: True for [4+C, A], False for [A, 4+C], None if it is not one.
    Boxes are centre/size in pixels (sizes >= 0) and class scores are probabilities."""
    if a.ndim != 2:
        return None
    for anchors_last, m in ((True, a), (False, a.T)):
        d, n = m.shape
        if 5 <= d < n and n >= 64:
            wh, cls = m[2:4], m[4:]
            if wh.min() >= 0 and cls.min() >= 0 and cls.max() <= 1.0 + 1e-4:
                return anchors_last
    return None


def find_layout(per_image: list[np.ndarray]) -> Layout | None:
    """The detection layout of a model's outputs for one image, or None when they are not a detector's."""
    outs = [squeeze_lead(o, 2) for o in per_image]
    for i, b in enumerate(outs):
        if b.ndim == 2 and b.shape[1] == 4 and b.shape[0] >= 8:
            for j, s in enumerate(outs):
                if j != i and s.ndim == 2 and b.shape[0] in s.shape and s.size > b.shape[0]:
                    return Layout("boxes+scores", i, j, anchors_last=s.shape[1] == b.shape[0] and s.shape[0] != b.shape[0])
    if len(outs) == 1:
        orient = _yolo_like(outs[0])
        if orient is not None:
            return Layout("yolo", 0, anchors_last=orient)
    return None


def candidates(per_image: list[np.ndarray], layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """All anchors of one image before NMS: xyxy [A, 4] and class scores [A, C]."""
    if layout.kind == "yolo":
        m = squeeze_lead(per_image[layout.boxes], 2)
        m = m.T if layout.anchors_last else m
        cx, cy, w, h = m[:, 0], m[:, 1], m[:, 2], m[:, 3]
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return xyxy.astype(np.float32), m[:, 4:].astype(np.float32)
    boxes = squeeze_lead(per_image[layout.boxes], 2).astype(np.float32)
    scores = squeeze_lead(per_image[layout.scores], 2).astype(np.float32)
    return boxes, scores.T if layout.anchors_last else scores


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `a` [N, 4] against every one in `b` [M, 4]: [N, M]."""
    a, b = a[:, None, :], b[None, :, :]
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 2], b[..., 2])
    y2 = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda v: np.clip(v[..., 2] - v[..., 0], 0, None) * np.clip(v[..., 3] - v[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    # Degenerate (zero-area) boxes overlap only themselves.
    return np.where(union > 0, inter / np.maximum(union, 1e-12), np.all(a == b, axis=-1).astype(np.float64))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against many."""
    return iou_matrix(np.asarray(box)[None], boxes)[0]


def nms(xyxy: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou_thres: float = IOU,
        max_det: int = MAX_DET) -> np.ndarray:
    """Indices kept by class-aware greedy NMS, best first (classes are kept apart by offsetting boxes)."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    offset = cls.astype(np.float32)[:, None] * (float(np.abs(xyxy).max()) + 1.0) * 2
    shifted = xyxy + offset
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(shifted[i], shifted[rest]) <= iou_thres]
    return np.asarray(keep, np.int64)


def decode(per_image: list[np.ndarray], layout: Layout, conf: float = CONF, top_k: int | None = None,
           max_det: int = MAX_DET) -> Boxes:
    """Boxes after the confidence threshold (or, with `top_k`, the k best anchors whatever their score)
    and class-aware NMS."""
    xyxy, scores = candidates(per_image, layout)
    cls = scores.argmax(1)
    best = scores[np.arange(len(scores)), cls]
    if top_k is not None:
        sel = np.argsort(-best, kind="stable")[:top_k]
    else:
        sel = np.flatnonzero(best >= conf)
    keep = sel[nms(xyxy[sel], best[sel], cls[sel], max_det=max_det)]
    return Boxes(xyxy[keep], best[keep], cls[keep])


def truth(boxes: list[np.ndarray]) -> list[Boxes]:
    """Ground truth as Boxes, from a dataset's per-image [K, 5] (class, x1, y1, x2, y2) arrays."""
    return [Boxes(b[:, 1:5].astype(np.float32), np.ones(len(b), np.float32), b[:, 0].astype(np.int64))
            for b in boxes]


def against_truth(per_image_outs: list[list[np.ndarray]], layout: Layout, gt: list[Boxes]) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (COCO's ten thresholds) of a detector's outputs against ground truth."""
    preds = [decode(o, layout, conf=EVAL_CONF, max_det=EVAL_MAX_DET) for o in per_image_outs]
    maps = mean_aps(preds, gt, np.linspace(0.5, 0.95, 10))
    return {"map50": maps[0], "map50_95": float(np.mean(maps)), "map75": maps[5]}


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, as VOC 2010+ and COCO integrate)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def mean_ap(preds: list[Boxes], truth: list[Boxes], iou_thres: float = 0.5) -> float:
    """mAP at one IoU threshold over the classes present in `truth`; 1.0 when both are empty."""
    return mean_aps(preds, truth, [iou_thres])[0]


def mean_aps(preds: list[Boxes], truth: list[Boxes], thresholds: Sequence[float]) -> list[float]:
    """mAP at each IoU threshold, over the classes present in `truth` (1.0 when both are empty).

    Detections of a class are taken best score first; each is matched to the truth box of its image it
    overlaps most, and counts as a hit when that overlap reaches the threshold and no better-scored detection
    took the box. The overlaps are computed once for every threshold."""
    classes = sorted({int(c) for t in truth for c in t.cls})
    if not classes:
        return [1.0 if all(len(p) == 0 for p in preds) else 0.0 for _ in thresholds]
    aps = np.zeros((len(classes), len(thresholds)))
    for ci, c in enumerate(classes):
        n_true = sum(int((t.cls == c).sum()) for t in truth)
        scores, best, key = [], [], []  # per detection: score, overlap with its best truth box, (image, box)
        for img, (p, t) in enumerate(zip(preds, truth)):
            mine = p.cls == c
            if not mine.any():
                continue
            gts = t.xyxy[t.cls == c]
            scores.append(p.score[mine].astype(np.float64))
            if len(gts):
                m = iou_matrix(p.xyxy[mine], gts)
                best.append(m.max(axis=1))
                key.append(img * (1 << 20) + m.argmax(axis=1))
            else:  # nothing of this class here: never a hit
                best.append(np.full(int(mine.sum()), -1.0))
                key.append(np.full(int(mine.sum()), -1, np.int64))
        if not scores:
            continue
        order = np.argsort(-np.concatenate(scores), kind="stable")
        best_o, key_o = np.concatenate(best)[order], np.concatenate(key)[order]
        ranks = np.arange(1, len(order) + 1)
        for ti, thres in enumerate(thresholds):
            hit = np.flatnonzero(best_o >= thres)
            tp = np.zeros(len(order))
            tp[hit[np.unique(key_o[hit], return_index=True)[1]]] = 1  # the first to reach each truth box
            ctp = np.cumsum(tp)
            aps[ci, ti] = _average_precision(ctp / max(n_true, 1), ctp / ranks)
    return [float(v) for v in aps.mean(axis=0)]
