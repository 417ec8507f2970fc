"""Task-aware fidelity: each metric on outputs whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.errors import DataError
from edgewise.profile import detection
from edgewise.profile.fidelity import check_task, fidelity, infer_task


def _yolo_head(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3,
               anchors: int = 100) -> np.ndarray:
    """One image's [4+C, A] head: the given (cx, cy, w, h, class, score) anchors, the rest background."""
    head = np.zeros((4 + classes, anchors), np.float32)
    head[2:4] = 1.0
    for i, (cx, cy, w, h, c, s) in enumerate(boxes):
        head[:4, i] = (cx, cy, w, h)
        head[4 + c, i] = s
    return head


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    cls = np.array([0, 0, 1, 0])
    assert detection.nms(xyxy, scores, cls).tolist() == [0, 2, 3]  # box 1 overlaps box 0 (same class)


def test_map_is_one_for_identical_boxes_and_drops_when_one_goes_missing():
    truth = [detection.Boxes(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0.9, 0.8]),
                             np.array([0, 1]))]
    assert detection.mean_ap(truth, truth) == 1.0
    half = [detection.Boxes(truth[0].xyxy[:1], truth[0].score[:1], truth[0].cls[:1])]
    assert detection.mean_ap(half, truth) == pytest.approx(0.5)  # class 1 missed entirely
    shifted = [detection.Boxes(truth[0].xyxy + 8, truth[0].score, truth[0].cls)]  # IoU well under 0.5
    assert detection.mean_ap(shifted, truth) == 0.0


def test_yolo_heads_are_decoded_and_detection_inferred():
    img = _yolo_head([(20, 20, 10, 10, 0, 0.9), (60, 60, 20, 20, 2, 0.8), (21, 20, 10, 10, 0, 0.5)])
    outs = [np.stack([img, img])]
    task = infer_task(outs, (3, 80, 80), labelled=False)
    assert task.name == "detection" and task.layout.kind == "yolo" and task.layout.anchors_last
    boxes = detection.decode([img], task.layout)
    assert len(boxes) == 2 and boxes.cls.tolist() == [0, 2]  # the 0.5 duplicate is suppressed
    moved = _yolo_head([(20, 20, 10, 10, 0, 0.9), (30, 60, 20, 20, 2, 0.8)])
    f = fidelity(task, [np.stack([moved, moved])], outs, None)
    assert f.kind == "map50_agreement" and f.value == pytest.approx(0.5)


def test_boxes_plus_scores_heads_and_an_untrained_detector_fall_back_to_top_anchors():
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 100, (1, 64, 4)).reshape(1, 64, 2, 2), axis=2).reshape(1, 64, 4)
    boxes = boxes[:, :, [0, 2, 1, 3]].astype(np.float32)
    scores = rng.uniform(0, 0.1, (1, 64, 5)).astype(np.float32)  # nothing reaches 0.25
    outs = [boxes, scores]
    task = infer_task(outs, (3, 100, 100), labelled=False)
    assert task.name == "detection" and task.layout.kind == "boxes+scores"
    f = fidelity(task, outs, outs, None)
    assert f.value == 1.0 and "best anchors" in f.details["note"]


def test_dense_maps_ctc_and_regression_are_told_apart():
    rng = np.random.default_rng(1)
    seg = rng.standard_normal((4, 5, 32, 32)).astype(np.float32)
    assert infer_task([seg], (3, 64, 64), False).name == "segmentation"  # half the input's size
    probs = rng.dirichlet(np.ones(7), size=(4, 12)).astype(np.float32)
    assert infer_task([probs], (3, 48, 96), False).name == "ctc"
    assert infer_task([rng.standard_normal((4, 10)).astype(np.float32)], (3, 8, 8), False).name == "classification"
    state = [rng.standard_normal((4, 10)).astype(np.float32), rng.standard_normal((4, 1, 16)).astype(np.float32)]
    assert infer_task(state, (3, 8, 8), False).name == "regression"


def test_iou_of_maps_and_character_error_rate():
    ref = np.zeros((2, 1, 8, 8), np.float32)
    ref[:, :, :4] = 0.9
    out = ref.copy()
    out[:, :, 3] = 0.1  # one of four foreground rows lost
    task = check_task("segmentation", [ref])
    assert fidelity(task, [out], [ref], None).value == pytest.approx(0.75)
    # CTC: blank = 0; "1 2" vs "1 3": one substitution in two characters
    def onehot(seq: list[int]) -> np.ndarray:
        return np.eye(4, dtype=np.float32)[seq][None]
    ref_seq, out_seq = onehot([1, 1, 0, 2, 0]), onehot([1, 0, 0, 3, 3])
    f = fidelity(check_task("ctc", [ref_seq]), [out_seq], [ref_seq], None)
    assert f.details["cer"] == pytest.approx(0.5) and f.value == pytest.approx(0.5)
    assert f.details["exact_sequences"] == 0.0


def test_a_ctc_recognizer_is_scored_against_the_text_when_the_data_and_model_say_it():
    """PaddleOCR's exports carry their alphabet (`character` metadata, space last); a dataset with texts is
    then the truth, and a reading that repeats the starting model's mistake is not 100%."""
    import onnx

    from edgewise.data import Dataset
    from edgewise.profile.fidelity import column_label, ctc_alphabet, ground_truth, with_alphabet

    model = onnx.ModelProto()
    model.metadata_props.add(key="character", value="a\nb\nc\n")
    assert ctc_alphabet(model, 5) == ("", "a", "b", "c", " ") and ctc_alphabet(model, 4) == ("", "a", "b", "c")
    assert ctc_alphabet(model, 9) is None and ctc_alphabet(onnx.ModelProto(), 5) is None

    def onehot(seq: list[int]) -> np.ndarray:
        return np.eye(5, dtype=np.float32)[seq][None]

    ref, out = onehot([1, 0, 2, 4, 3]), onehot([1, 0, 2, 4, 2])  # "ab c", then "ab b"
    task = with_alphabet(check_task("ctc", [ref]), model, [ref])
    ds = Dataset("t", np.zeros((1, 1, 4, 4), np.float32), None, [], texts=["ab c"])
    truth = ground_truth(task, ds)
    assert truth == [(1, 2, 4, 3)] and ground_truth(check_task("ctc", [ref]), ds) is None  # no alphabet: none
    f = fidelity(task, [out], [ref], truth)
    assert f.kind == "char_accuracy" and f.value == pytest.approx(0.75) and f.accuracy == pytest.approx(0.75)
    assert f.details["cer"] == pytest.approx(0.25) and f.details["exact_lines"] == 0.0
    assert fidelity(task, [ref], [ref], [(1, 2, 4, 2)]).value == pytest.approx(0.75)  # the model's own slip counts
    assert ground_truth(task, Dataset("t", np.zeros((1, 1, 4, 4), np.float32), None, [], texts=["aé"])) == [(1, -1)]
    # the CLI's tables name the score in 9 columns: both CERs read "1 - CER" there, top-1 agreement "top1"
    assert column_label(f.kind) == column_label("cer_agreement") == "1 - CER"
    assert column_label("top1_agreement") == "top1" and column_label("map50_95") == "mAP50-95"


def test_empty_maps_are_compared_on_their_highest_pixels_not_counted_as_agreeing():
    """A text detector shown photos without text marks no pixel: two empty maps must not score 100%."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 0.3, (3, 1, 20, 20)).astype(np.float32)  # nothing above 0.5 anywhere
    task = check_task("segmentation", [ref])
    same = fidelity(task, [ref + 0.01], [ref], None)
    other = fidelity(task, [rng.uniform(0.0, 0.3, ref.shape).astype(np.float32)], [ref], None)
    assert same.value == pytest.approx(1.0) and "highest-scoring pixels" in same.details["note"]
    assert other.value < 0.2, other.value
    marked = ref.copy()
    marked[:, :, :5] = 0.9  # a map with foreground is judged at 0.5, as before, with no note
    assert "note" not in fidelity(task, [marked], [marked], None).details
    # a sigmoid that rounds to 1.0000001 is still a probability map, judged at 0.5, not at 0 as logits
    sigmoid = np.zeros_like(ref)
    sigmoid[:, :, :5] = 0.9
    sigmoid[0, 0, 0, 0] = np.float32(1.0000001)
    assert fidelity(task, [sigmoid + np.float32(0.01)], [sigmoid], None).value == pytest.approx(1.0)


def test_every_output_counts_for_regression_and_classification_uses_labels():
    a = np.ones((3, 4), np.float32)
    b = np.ones((3, 2), np.float32)
    task = check_task("regression", [a, b])
    f = fidelity(task, [a, -b], [a, b], None)  # the second output is flipped: the worst output decides
    assert f.value == pytest.approx(-1.0) and f.details["cosine_per_output"][0] == pytest.approx(1.0)
    logits = np.array([[2, 1], [0, 3], [5, 1]], np.float32)
    f = fidelity(check_task("classification", [logits]), [logits], [logits], np.array([0, 1, 1]))
    assert f.kind == "accuracy" and f.value == pytest.approx(2 / 3)


def test_a_named_task_must_fit_the_outputs():
    with pytest.raises(DataError, match="no YOLO-style"):
        check_task("detection", [np.zeros((2, 10), np.float32)])
    with pytest.raises(DataError, match="unknown task"):
        check_task("pose", [np.zeros((2, 10), np.float32)])
