"""Detection from data to boxes: the bundled shapes set, YOLO-format folders, the zoo's tinydet trained on
them, int8 within tolerance by mAP against ground truth, and the agent drawing boxes on a JPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgewise.data import load, load_splits
from edgewise.data.shapes import shapes, write_yolo_folder
from edgewise.errors import DataError
from edgewise.profile import detection


def test_a_yolo_folder_reads_back_the_boxes_it_was_written_with(tmp_path):
    ds = shapes(96, n=24)
    root = write_yolo_folder(ds, tmp_path / "set")
    back = load(f"{root}:96")
    assert back.labels == ["circle", "square", "triangle"] and back.boxes is not None and back.y is None
    for a, b in zip(ds.boxes, back.boxes):
        assert a.shape == b.shape and np.abs(a - b).max() < 0.01  # JPEG changes pixels, never boxes
    # letterboxed to another size: boxes scale with the image (square images: no padding)
    big = load(f"{root}:192")
    assert np.abs(big.boxes[0][:, 1:] - ds.boxes[0][:, 1:] * 2).max() < 0.02
    # a wide image is letterboxed: boxes move into the padded frame
    from PIL import Image

    Image.new("RGB", (200, 100), (9, 9, 9)).save(root / "images" / "wide.png")
    (root / "labels" / "wide.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    wide = load(f"{root}:100")
    i = [k for k, b in enumerate(wide.boxes) if len(b) == 1 and b[0, 0] == 1 and abs(b[0, 3] - b[0, 1] - 20) < 0.1]
    assert i and np.allclose(wide.boxes[i[0]][0, 1:], [40, 40, 60, 60], atol=0.6)  # 25 px of padding top


def test_malformed_yolo_folders_are_named_to_the_line(tmp_path):
    root = write_yolo_folder(shapes(96, n=3), tmp_path / "set")
    (root / "labels" / "00001.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"00001.txt:2: class 7"):
        load(str(root))
    (root / "labels" / "00001.txt").write_text("0 0.5 0.5 1.7 0.1\n")
    with pytest.raises(DataError, match=r"00001.txt:1: box values must be normalized"):
        load(str(root))
    (root / "labels" / "00001.txt").write_text("zero 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"expected `class cx cy w h`"):
        load(str(root))
    (root / "labels" / "00001.txt").unlink()  # no label file: a background image, not an error
    assert len(load(f"{root}:96").boxes[1]) == 0
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        load(str(root))
    (root / "data.yaml").write_text("names: {0: ball, 1: box, 2: cone}\n")
    assert load(f"{root}:96").labels == ["ball", "box", "cone"]


def test_map_against_ground_truth_counts_misses_and_loose_boxes():
    gt = detection.truth([np.array([[0, 10, 10, 50, 50], [1, 60, 60, 90, 90]], np.float32)])
    exact = [detection.Boxes(gt[0].xyxy.copy(), np.array([0.9, 0.8], np.float32), gt[0].cls.copy())]
    assert detection.mean_ap(exact, gt) == 1.0
    loose = [detection.Boxes(gt[0].xyxy + 4, exact[0].score, exact[0].cls)]  # IoU 0.68 and 0.60
    assert detection.mean_ap(loose, gt, 0.5) == 1.0 and detection.mean_ap(loose, gt, 0.75) == 0.0
    half = [detection.Boxes(gt[0].xyxy[:1], exact[0].score[:1], exact[0].cls[:1])]
    assert detection.mean_ap(half, gt) == 0.5


def test_train_before_boxes_is_refused_readably():
    from edgewise.errors import ModelError
    from edgewise.zoo import TrainConfig, train

    with pytest.raises(ModelError, match="train a detector"):
        train("cnn", load_splits("shapes:32"), TrainConfig(epochs=1))
    with pytest.raises(ModelError, match="trains on boxes"):
        train("tinydet", load_splits("digits:32"), TrainConfig(epochs=1))


@pytest.mark.e2e
def test_tinydet_trains_on_shapes_goes_int8_and_the_agent_boxes_a_jpeg(tmp_path):
    from fastapi.testclient import TestClient
    from PIL import Image

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.data.shapes import render
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    # Train: a detector from scratch on the bundled set, scored against its boxes
    tm = train("tinydet", load_splits("shapes"), TrainConfig(epochs=25))
    assert tm.metrics["test_map50"] > 0.85 and tm.metrics["test_map50_95"] > 0.45, tm.metrics
    tm.save(tmp_path / "t")
    # Optimize: int8 candidates are judged by mAP@0.5:0.95 against ground truth, not against the float model
    out = optimize(tmp_path / "t", "shapes", load_target("edge-node"), tmp_path / "o",
                   SearchOptions(only=("baseline-fused", "baseline-int8-minmax"), measure_memory=False,
                                 latency_runs=10))
    f = out.result.final
    assert out.result.task.name == "detection" and f["fidelity_kind"] == "map50_95"
    assert f["accuracy"] == f["fidelity_details"]["map50_95"] and "map50" in f["fidelity_details"]
    assert f["accuracy"] >= f["baseline_accuracy"] - 0.01 and out.report["accuracy_kind"] == "map50_95"
    # Serve: a JPEG twice the model's size, on a wider canvas (letterboxed to 3/8 scale, so shapes are
    # picked large enough to stay within the sizes trained on), gets boxes in its own pixels
    rng = np.random.default_rng(11)
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(im) for im in load_sample_images().images]
    img, boxes = render(192, rng, photos)
    while len(boxes) < 2 or (boxes[:, 3] - boxes[:, 1]).min() < 0.3 * 192:
        img, boxes = render(192, rng, photos)
    canvas = Image.new("RGB", (256, 192), (40, 40, 40))
    canvas.paste(Image.fromarray(img), (32, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=95)
    agent = build_agent(AgentConfig(bundles=[out.bundle], tier="server", data_dir=tmp_path / "a"))
    try:
        r = TestClient(agent.app).post("/predict", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    finally:
        agent.close()
    assert r.status_code == 200, r.text
    found = r.json()["boxes"]
    names = ["circle", "square", "triangle"]
    for k, x1, y1, x2, y2 in boxes:  # every shape found, named, and boxed to within IoU 0.6
        want = np.array([x1 + 32, y1, x2 + 32, y2])
        best = max((detection.iou(want, np.array([b["box"]]))[0], b["label"]) for b in found)
        assert best[0] > 0.6 and best[1] == names[int(k)], (boxes, found)
