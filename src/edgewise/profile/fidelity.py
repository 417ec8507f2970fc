"""How faithful a candidate is to the starting model, in the terms of the model's task.

Every metric is in [0, 1], higher is better, and the starting model scores 1.0 against itself (or its
accuracy, when there are labels), so "drop in points" means the same for every task:

| task           | labels         | without labels: agreement with the starting model                    |
|----------------|----------------|-----------------------------------------------------------------------|
| classification | top-1 accuracy | top-1 agreement                                                      |
| detection      | mAP@0.5:0.95   | mAP@0.5 of the candidate's boxes against the starting model's boxes |
| segmentation   | -              | mean IoU of the thresholded (or argmax) maps                         |
| ctc            | 1 - CER (text) | 1 - character error rate of the greedy decode (exact lines beside)  |
| regression     | -              | cosine similarity, the worst output (relative L2 beside)            |
| anomaly        | AUROC          | 1 - mean relative error of the anomaly scores                        |

Against a detector's ground-truth boxes the figure is COCO's mAP@0.5:0.95, not mAP@0.5: pruning and
quantization loosen boxes long before they lose objects, and mAP@0.5 does not see it (a pruned YOLOv8n kept
99.7% mAP@0.5 while falling 7 points at 0.5:0.95). Agreement with the starting model stays at mAP@0.5: its own
boxes are no ground truth to be tight against.

A CTC recognizer is scored against the text itself where the data carries it (`Dataset.texts`) and the
model carries its alphabet (`ctc_alphabet`: PaddleOCR's exports hold it in their `character` metadata; a
dictionary file given with `--labels` stands in for it). Spaces read in the margins before and after the text
are not counted: PP-OCRv4 reads one before most lines, and PaddleOCR's own metric ignores spaces altogether.

An anomaly model's output is a residual whose mean square is the score (`media.anomaly`); its ground
truth is "not the normal class", and AUROC needs both kinds in the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgewise.errors import DataError
from edgewise.profile import detection

TASKS = ("classification", "detection", "segmentation", "ctc", "regression", "anomaly")
KINDS = {"classification": "top1_agreement", "detection": "map50_agreement", "segmentation": "iou_agreement",
         "ctc": "cer_agreement", "regression": "cosine", "anomaly": "score_agreement"}
TRUTH_KIND = {"classification": "accuracy", "detection": "map50_95", "anomaly": "auroc",  # the figure with labels
              "ctc": "char_accuracy"}
LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "map50_agreement": "mAP50 agreement", "auroc": "AUROC",
          "iou_agreement": "IoU agreement", "cer_agreement": "1 - CER", "char_accuracy": "1 - CER (text)"}
TOP_K_FALLBACK = 100


def label(kind: str) -> str:
    """A fidelity kind as people write it: `map50_95` is mAP50-95."""
    if kind.endswith("_with_fp32"):
        return label(kind.removesuffix("_with_fp32")) + " with fp32"
    return LABELS.get(kind, kind.replace("_", " "))


def column_label(kind: str) -> str:
    """`label` cut to a table column's 9 characters: 'top1' for top1 agreement, '1 - CER' for 1 - CER
    (text)."""
    return label(kind).removesuffix(" agreement").split(" (")[0][:9]


@dataclass
class Fidelity:
    """How a model scores: `value` is the task's metric (`kind`), with the classic figures beside it."""

    accuracy: float | None
    top1_agreement: float | None
    cosine: float | None
    kind: str = "top1_agreement"
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The task's metric: accuracy when labels exist, else agreement with the reference model."""
        if self.value is not None:
            return self.value
        value = self.accuracy if self.accuracy is not None else self.top1_agreement
        return float("nan") if value is None else value


@dataclass(frozen=True)
class Task:
    """What a model's outputs mean, decided once from the starting model's outputs."""

    name: str
    why: str
    layout: detection.Layout | None = None
    alphabet: tuple[str, ...] | None = None  # a CTC model's classes as characters (0: blank), when it says

    def as_dict(self) -> dict[str, str]:
        return {"task": self.name, "why": self.why, "fidelity_kind": KINDS[self.name]}


def _per_sample(outs: list[np.ndarray]) -> list[np.ndarray]:
    """Output k of sample 0, leading batch-of-one axes dropped."""
    return [detection.squeeze_lead(o[0], 1) for o in outs]


def _is_dense(shape: tuple[int, ...], input_hw: tuple[int, int] | None) -> bool:
    """A map whose last two axes scale the image's height and width by one factor (1, 1/2, 1/4, ...)."""
    if input_hw is None or len(shape) < 2 or min(shape[-2:]) < 4:
        return False
    fh, fw = shape[-2] / input_hw[0], shape[-1] / input_hw[1]
    return abs(fh - fw) < 1e-6 and fh <= 1.0


def _sums_to_one(a: np.ndarray) -> bool:
    return a.ndim >= 2 and a.shape[-1] >= 3 and bool(np.allclose(a.sum(-1), 1.0, atol=1e-3)) and a.min() >= 0


def infer_task(outs: list[np.ndarray], input_shape: tuple[int, ...] | None, labelled: bool) -> Task:
    """The task, inferred from the starting model's outputs (sample-major) where they are unambiguous;
    `regression` (cosine over all outputs) otherwise."""
    one = _per_sample(outs)
    hw = tuple(input_shape[-2:]) if input_shape is not None and len(input_shape) >= 3 else None
    if len(one) == 1 and one[0].ndim == 2 and one[0].shape[0] >= 2 and _sums_to_one(one[0]):
        return Task("ctc", f"inferred: one output of {one[0].shape[0]} steps x {one[0].shape[1]} probabilities")
    layout = detection.find_layout(one)
    if layout is not None:
        return Task("detection", f"inferred: {layout.describe()}", layout)
    if len(one) == 1:
        a = one[0]
        shape = a.shape
        if a.ndim == 1 and shape[0] >= 2:
            return Task("classification", f"inferred: one output of {shape[0]} scores per sample (pass --task "
                                          "regression for an embedding)")
        if _is_dense(shape, hw):
            return Task("segmentation", f"inferred: a {'x'.join(map(str, shape))} map at the input's aspect")
    if labelled and one and one[0].ndim == 1:
        return Task("classification", "inferred: labelled data and a vector first output")
    n = len(one)
    return Task("regression", f"inferred: {n} output{'s' if n > 1 else ''} with no task-specific shape "
                              "(cosine over all outputs)")


def check_task(name: str, outs: list[np.ndarray]) -> Task:
    """A task the user named, checked against the outputs (a detector must have a decodable head)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    if name == "detection":
        layout = detection.find_layout(_per_sample(outs))
        if layout is None:
            shapes = ", ".join(str(list(o.shape[1:])) for o in outs)
            raise DataError(f"--task detection: no YOLO-style [4+C, A] head or boxes [A, 4] + scores [A, C] "
                            f"among the outputs ({shapes})")
        return Task("detection", f"given: {layout.describe()}", layout)
    return Task(name, "given (--task)")


def _cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a = out.reshape(len(out), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    return np.where(same, 1.0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-12))


def _output_agreement(outs: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, Any]:
    """Cosine and relative L2 per output, and the worst of each."""
    cos = [float(np.mean(_cosines(o, r))) for o, r in zip(outs, refs)]
    rel = [float(np.linalg.norm((o - r).astype(np.float64)) / max(np.linalg.norm(r.astype(np.float64)), 1e-12))
           for o, r in zip(outs, refs)]
    return {"cosine": min(cos), "rel_l2": max(rel), "cosine_per_output": cos, "rel_l2_per_output": rel}


def ctc_alphabet(model: Any, classes: int | None = None, chars: Sequence[str] = ()) -> tuple[str, ...] | None:
    """A CTC model's classes as characters, blank first, as PaddleOCR keeps them: the model's `character`
    metadata (one character per line), else `chars` (its dictionary file's lines: `--labels`); a last class
    beyond them is the space. None when neither says, or the count does not match the model's `classes`."""
    meta = next((p.value for p in getattr(model, "metadata_props", []) if p.key == "character"), None)
    listed = tuple(meta.removesuffix("\n").split("\n")) if meta else tuple(chars)
    if not listed:
        return None
    alphabet = ("",) + listed
    if classes is not None and classes == len(alphabet) + 1:
        alphabet += (" ",)
    return alphabet if classes is None or classes == len(alphabet) else None


def with_alphabet(task: Task, model: Any, outs: list[np.ndarray], chars: Sequence[str] = ()) -> Task:
    """A CTC task with the model's alphabet (`ctc_alphabet`: its metadata, else `chars`), so texts can be its
    ground truth and its answers read as text."""
    if task.name != "ctc" or task.alphabet is not None or not outs:
        return task
    return replace(task, alphabet=ctc_alphabet(model, int(outs[0].shape[-1]), chars))


def ctc_kept(best: np.ndarray) -> np.ndarray:
    """Which steps of one sample's best classes greedy CTC keeps: repeats collapsed, blanks (class 0) dropped."""
    return np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)


def _ctc_decode(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC per sample: argmax per step, repeats collapsed, blanks (class 0) dropped."""
    return [tuple(int(v) for v in row[ctc_kept(row)]) for row in probs.argmax(-1).reshape(len(probs), -1)]


def _strip_ends(seq: tuple[int, ...], blanks: set[int]) -> tuple[int, ...]:
    """A decoded line without the spaces a recognizer reads in the margins before and after the text."""
    lo, hi = 0, len(seq)
    while lo < hi and seq[lo] in blanks:
        lo += 1
    while hi > lo and seq[hi - 1] in blanks:
        hi -= 1
    return seq[lo:hi]


def _edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


TOP_PIXELS_FALLBACK = 0.05


def _iou_maps(out: np.ndarray, ref: np.ndarray) -> tuple[float, str | None]:
    """Mean IoU over classes present: argmax for multi-class maps, a threshold for one-channel maps
    (0.5 for probabilities, 0 for logits). Where the starting model marks no pixel of a one-channel map on
    any sample (a text detector shown photos without text), two empty maps would agree perfectly whatever
    the candidate did: each sample's highest-scoring pixels (the top 5% of each map) are compared instead.
    Returns the IoU and, then, a note saying so."""
    out, ref = detection.squeeze_lead(out, 3), detection.squeeze_lead(ref, 3)
    channels = out.shape[1] if out.ndim == 4 else 1
    note = None
    if channels > 1:
        a, b = out.argmax(1), ref.argmax(1)
        classes = np.union1d(np.unique(a), np.unique(b))
    else:
        # probabilities, allowing float rounding: PP-OCR's sigmoid map reaches 1.0000001, which as "logits"
        # put the threshold at 0 and compared nearly-all-foreground maps
        thr = 0.5 if ref.min() >= -1e-3 and ref.max() <= 1 + 1e-3 else 0.0
        o, r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        if (r > thr).any():
            a, b = o > thr, r > thr
        else:
            q = 1 - TOP_PIXELS_FALLBACK
            a = o > np.quantile(o, q, axis=1, keepdims=True)
            b = r > np.quantile(r, q, axis=1, keepdims=True)
            note = (f"the starting model marks no pixel above the threshold on any sample; compared on each "
                    f"sample's {TOP_PIXELS_FALLBACK:.0%} highest-scoring pixels in each map")
        classes = np.array([True])
    ious = []
    for c in classes:
        ia, ib = a == c, b == c
        union = np.logical_or(ia, ib).sum()
        ious.append(1.0 if union == 0 else np.logical_and(ia, ib).sum() / union)
    return float(np.mean(ious)), note


def _detections(outs: list[np.ndarray], refs: list[np.ndarray], layout: detection.Layout) -> dict[str, Any]:
    n = len(refs[0])
    ref_img = [[r[i] for r in refs] for i in range(n)]
    out_img = [[o[i] for o in outs] for i in range(n)]
    truth = [detection.decode(r, layout) for r in ref_img]
    note = None
    if sum(len(t) for t in truth) == 0:
        # An untrained or unsure detector finds nothing above the threshold: compare its best anchors instead.
        truth = [detection.decode(r, layout, top_k=TOP_K_FALLBACK) for r in ref_img]
        preds = [detection.decode(o, layout, top_k=TOP_K_FALLBACK) for o in out_img]
        note = (f"the starting model finds no box above confidence {detection.CONF}; compared on each "
                f"image's {TOP_K_FALLBACK} best anchors after NMS")
    else:
        preds = [detection.decode(o, layout) for o in out_img]
    value = detection.mean_ap(preds, truth)
    details = {"map50": value, "boxes_reference": sum(len(t) for t in truth),
               "boxes_candidate": sum(len(p) for p in preds)}
    if note:
        details["note"] = note
    return details


TRUTH_KINDS = tuple(TRUTH_KIND.values())  # fidelity kinds measured against ground truth, not the starting model


def ground_truth(task: Task, ds: Any) -> Any:
    """What a dataset holds to score this task against, or None: class labels for classification, boxes
    for detection, the texts as the model's class sequences for a CTC recognizer that names its alphabet."""
    if task.name == "classification":
        return ds.y
    if task.name == "detection" and getattr(ds, "boxes", None) is not None:
        return detection.truth(ds.boxes)
    if task.name == "ctc" and task.alphabet and getattr(ds, "texts", None) is not None:
        index = {ch: i for i, ch in enumerate(task.alphabet) if i}
        # -1: a character it cannot write. Blanks at the ends are margins, not text (as `read_text` answers)
        return [tuple(index.get(ch, -1) for ch in text.strip()) for text in ds.texts]
    if task.name == "anomaly" and ds.y is not None and ds.labels:
        from edgewise.media.anomaly import normal_index

        bad = ds.y != normal_index(ds.labels, ds.preprocessing)
        return bad if bad.any() and not bad.all() else None
    return None


def fidelity(task: Task, outs: list[np.ndarray], refs: list[np.ndarray], y: Any) -> Fidelity:
    """Score `outs` (a candidate's outputs, sample-major) against `refs` (the starting model's), and
    against ground truth `y` when there is some (`ground_truth`): labels, or a detector's boxes."""
    agree = _output_agreement(outs, refs)
    first, ref0 = outs[0], refs[0]
    top1 = None
    if first.ndim >= 2:
        top1 = float(np.mean(first.argmax(-1) == ref0.argmax(-1)))
    details: dict[str, Any] = dict(agree)
    accuracy = None
    if task.name == "classification":
        flat = first.reshape(len(first), -1)
        if y is not None:
            accuracy = float((flat.argmax(1) == y).mean())
        value = accuracy if accuracy is not None else float(np.mean(flat.argmax(1) == ref0.reshape(len(ref0), -1).argmax(1)))
        kind = "accuracy" if accuracy is not None else "top1_agreement"
    elif task.name == "detection":
        assert task.layout is not None
        details.update(_detections(outs, refs, task.layout))
        value, kind = details["map50"], "map50_agreement"
        if y is not None:  # boxes: mAP against ground truth is the figure; agreement stays beside it
            n = len(outs[0])
            gt = detection.against_truth([[o[i] for o in outs] for i in range(n)], task.layout, y)
            details["map50_agreement"] = details.pop("map50")
            details.update(gt)
            accuracy = value = gt["map50_95"]
            kind = "map50_95"
    elif task.name == "segmentation":
        value, note = _iou_maps(first, ref0)
        kind = "iou_agreement"
        if note:
            details["note"] = note
    elif task.name == "ctc":
        a, b = _ctc_decode(detection.squeeze_lead(first, 3)), _ctc_decode(detection.squeeze_lead(ref0, 3))
        errors = sum(_edit_distance(p, r) for p, r in zip(a, b))
        chars = sum(len(r) for r in b)
        cer = errors / chars if chars else float(any(a))
        details.update({"cer": cer, "exact_sequences": float(np.mean([p == r for p, r in zip(a, b)]))})
        value, kind = max(0.0, 1.0 - cer), "cer_agreement"
        if y is not None:
            blanks = {i for i, ch in enumerate(task.alphabet or ()) if i and not ch.strip()}
            a = [_strip_ends(p, blanks) for p in a]
            truth_chars = sum(len(t) for t in y)
            cer_text = sum(_edit_distance(p, t) for p, t in zip(a, y)) / max(truth_chars, 1)
            details.update({"cer_text": cer_text, "exact_lines": float(np.mean([p == t for p, t in zip(a, y)]))})
            accuracy = value = max(0.0, 1.0 - cer_text)
            kind = "char_accuracy"
    elif task.name == "anomaly":
        from edgewise.media.anomaly import auroc, scores

        sc, sr = scores(first), scores(ref0)
        rel = float(np.abs(sc - sr).mean() / max(float(sr.mean()), 1e-12))
        details.update({"score_rel_error": rel, "score_agreement": max(0.0, 1.0 - rel)})
        value, kind = details["score_agreement"], "score_agreement"
        if y is not None:
            bad = np.asarray(y, bool)
            accuracy = value = details["auroc"] = auroc(sc[~bad], sc[bad])
            kind = "auroc"
    else:
        value, kind = agree["cosine"], "cosine"
    return Fidelity(accuracy, top1, agree["cosine"], kind, float(value), details)


__all__ = ["KINDS", "TASKS", "TRUTH_KIND", "TRUTH_KINDS", "Fidelity", "Task", "check_task", "column_label",
           "ctc_alphabet", "ctc_kept", "fidelity", "ground_truth", "infer_task", "label", "with_alphabet"]
