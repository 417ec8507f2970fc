"""Answers people use, from a model's raw outputs, as the bundle declares them (manifest `postprocessing`):

    {"kind": "classification", "top_k": 5}
    {"kind": "detection", "layout": {"kind": "yolo", "boxes": 0, ...}, "conf": 0.25, "iou": 0.45, "max_det": 100}
    {"kind": "ctc"}         a text recognizer: the manifest's labels are its alphabet, blank first

Detections come back in the original image's pixels (the letterbox undone), with class names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgewise.errors import DataError
from edgewise.media.image import Prepared
from edgewise.profile import detection
from edgewise.profile.fidelity import Task, ctc_kept


def postprocessing_for(task: Task, labels: list[str]) -> dict[str, Any]:
    """The declaration `optimize` writes for a task (empty for tasks with no packaged answer yet)."""
    if task.name == "classification":
        return {"kind": "classification", "top_k": min(5, max(1, len(labels) or 5))}
    if task.name == "detection" and task.layout is not None:
        lay = task.layout
        return {"kind": "detection", "layout": {"kind": lay.kind, "boxes": lay.boxes, "scores": lay.scores,
                                                "anchors_last": lay.anchors_last},
                "conf": detection.CONF, "iou": detection.IOU, "max_det": 100}
    if task.name == "ctc" and task.alphabet:
        return {"kind": "ctc"}
    return {}


def _name(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else str(k)


def classify(out: np.ndarray, labels: list[str], top_k: int = 5) -> dict[str, Any]:
    """Label, score and the top k, from one sample's scores (softmax applied unless they are probabilities)."""
    s = np.asarray(out, np.float64).reshape(-1)
    if not (s.min() >= 0 and abs(s.sum() - 1) < 1e-3):
        e = np.exp(s - s.max())
        s = e / e.sum()
    order = np.argsort(-s)[:top_k]
    top = [{"label": _name(labels, int(k)), "class": int(k), "score": float(s[k])} for k in order]
    return {"label": top[0]["label"], "class": top[0]["class"], "score": top[0]["score"], "top": top}


def read_text(out: np.ndarray, alphabet: list[str]) -> dict[str, Any]:
    """A CTC recognizer's text from one sample's scores [T, C] (class 0 the blank): the best class at each step,
    repeats collapsed, blanks dropped, as PaddleOCR decodes. `score`: the mean probability of the steps kept
    (softmax applied unless they are probabilities already); 0 for an empty read."""
    s = np.asarray(out, np.float64)
    s = s.reshape(-1, s.shape[-1])
    if len(alphabet) != s.shape[-1]:
        raise DataError(f"the recognizer has {s.shape[-1]} classes but its alphabet {len(alphabet)} characters")
    if not (s.min() >= 0 and np.allclose(s.sum(-1), 1, atol=1e-3)):
        e = np.exp(s - s.max(-1, keepdims=True))
        s = e / e.sum(-1, keepdims=True)
    best = s.argmax(-1)
    keep = ctc_kept(best)
    return {"text": "".join(alphabet[k] for k in best[keep]).strip(),  # spaces read in the margins are not text
            "score": float(s[np.flatnonzero(keep), best[keep]].mean()) if keep.any() else 0.0}


def detect(outs: list[np.ndarray], post: dict[str, Any], prepared: Prepared, labels: list[str]) -> dict[str, Any]:
    """Boxes above the confidence threshold after class-aware NMS, in the original image's pixels."""
    try:
        lay = post["layout"]
        layout = detection.Layout(str(lay["kind"]), int(lay["boxes"]), int(lay.get("scores", -1)),
                                  bool(lay.get("anchors_last", True)))
        conf, iou, max_det = float(post.get("conf", 0.25)), float(post.get("iou", 0.45)), int(post.get("max_det", 100))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"the bundle's detection postprocessing is malformed ({e})") from e
    one = [np.asarray(o)[0] if np.asarray(o).ndim > 2 else np.asarray(o) for o in outs]
    xyxy, scores = detection.candidates(one, layout)
    cls = scores.argmax(1)
    best = scores[np.arange(len(scores)), cls]
    sel = np.flatnonzero(best >= conf)
    keep = sel[detection.nms(xyxy[sel], best[sel], cls[sel], iou, max_det)]
    boxes = prepared.to_original(xyxy[keep])
    found = [{"label": _name(labels, int(c)), "class": int(c), "score": float(s),
              "box": [round(float(v), 1) for v in b]}
             for b, s, c in zip(boxes, best[keep], cls[keep]) if math.isfinite(float(s))]
    return {"boxes": found, "image_size": list(prepared.original)}


__all__ = ["classify", "detect", "postprocessing_for"]
