"""A folder of images in the layout people have (one subfolder per class) goes in as data, and the class
names come out of the agent when it is sent a JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgewise.data import load
from edgewise.errors import DataError


def _folder(root: Path, per_class: int = 24) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for name, im in zip(("temple", "flower"), load_sample_images().images):
        d = root / name
        d.mkdir(parents=True)
        pil = Image.fromarray(im)
        for i in range(per_class):
            s = int(rng.integers(120, 400))
            x, y = int(rng.integers(0, pil.width - s)), int(rng.integers(0, pil.height - s))
            pil.crop((x, y, x + s, y + s)).save(d / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


def test_a_class_per_subfolder_keeps_names_and_declares_the_image_path(tmp_path):
    ds = load(f"{_folder(tmp_path / 'scenes')}:32")
    assert ds.labels == ["flower", "temple"] and ds.x.shape == (48, 3, 32, 32) and set(ds.y.tolist()) == {0, 1}
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.preprocessing["resize"] == [32, 32] and ds.preprocessing["color"] == "RGB"
    flat = load(str(tmp_path / "scenes" / "temple"))  # images directly: unlabelled, default size 96
    assert flat.y is None and flat.x.shape == (24, 3, 96, 96)


def test_empty_folders_and_broken_images_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .jpg/.png images"):
        load(str(tmp_path / "empty"))
    root = _folder(tmp_path / "scenes", per_class=2)
    (root / "flower" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(DataError, match="broken.jpg"):
        load(str(root))


def test_images_without_a_size_load_at_the_size_asked_and_a_wrong_size_says_what_to_give(tmp_path):
    from onnx import TensorProto, helper

    from edgewise.data import load_splits
    from edgewise.modelio import image_size

    folder = _folder(tmp_path / "scenes", per_class=6)
    assert load(str(folder), size=40).x.shape[1:] == (3, 40, 40)
    assert load(f"{folder}:24", size=40).x.shape[1:] == (3, 24, 24)  # a size the user gave wins
    assert load("shapes", size=64).x.shape[1:] == (3, 64, 64) and load("shapes").x.shape[1:] == (3, 96, 96)

    def model(shape):  # type: ignore[no-untyped-def]
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        return helper.make_model(g)

    assert image_size(model([1, 3, 40, 40])) == 40 and image_size(model(["n", 1, 28, 28])) == 28
    assert image_size(model([1, 3, 40, 30])) is None and image_size(model([1, 64])) is None
    assert image_size(model([1, 3, "h", "w"])) is None and image_size(model([1, 40, 40, 3])) is None
    with pytest.raises(DataError, match=r"model's size \(DATA:40\)"):
        load_splits(f"{folder}:24").train.reshaped((3, 40, 40))


def test_train_optimize_and_serve_a_folder_then_post_a_jpeg(tmp_path):
    from PIL import Image

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.data import load_splits
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    folder = _folder(tmp_path / "scenes")
    train("cnn", load_splits(f"{folder}:32"), TrainConfig(epochs=2)).save(tmp_path / "t")
    # the folder without a size loads at the model's input size (its own default, 96, would not fit)
    out = optimize(tmp_path / "t", str(folder), load_target("cortex-a"), tmp_path / "o",
                   SearchOptions(torch_passes=False, only=("baseline-fused",), measure_memory=False, latency_runs=5))
    agent = build_agent(AgentConfig(bundles=[out.bundle], tier="server", data_dir=tmp_path / "a"))
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 180, 40)).save(buf, "JPEG")
    r = TestClient(agent.app).post("/predict", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    agent.close()
    assert r.status_code == 200, r.text
    assert r.json()["label"] in ("flower", "temple") and {t["label"] for t in r.json()["top"]} == {"flower", "temple"}
