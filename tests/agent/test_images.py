"""JPEG/PNG in, boxes and labels out: the bundle's declared preprocessing and postprocessing run on the
device. A detector whose head is a constant makes the right answer known to the pixel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from edgewise.agent.runner import AgentConfig, build_agent
from edgewise.media import ImageSpec, decode, prepare
from edgewise.optimize.pipeline import optimize
from edgewise.optimize.search import SearchOptions
from edgewise.targets import load_target

SIZE = 160
LABELS = ["cat", "dog", "kite"]


def _constant_detector() -> onnx.ModelProto:
    """A YOLO-style [1, 4+3, 64] head that always finds one 'kite' at (cx 80, cy 60, w 40, h 20) in the
    160x160 letterboxed frame, whatever the image (plus 0 x the image, so the image is its input)."""
    head = np.zeros((1, 7, 64), np.float32)
    head[0, 2:4] = 1.0
    head[0, :4, 5] = (80, 60, 40, 20)
    head[0, 4 + 2, 5] = 0.9
    head[0, 4 + 0, 9] = 0.1  # below the threshold: dropped
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["head", "z"], ["output0"])]
    graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                             [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 64])],
                              [numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.float32(0), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _jpeg(w: int, h: int, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def detector_bundle(root: Path, declared: dict | None = None):  # type: ignore[no-untyped-def]
    """The constant detector, optimized (fused only) into a bundle named kites with LABELS."""
    onnx.save(_constant_detector(), str(root / "det.onnx"))
    opts = SearchOptions(only=("baseline-fused",), measure_memory=False, latency_runs=5, task="detection")
    return optimize(root / "det.onnx", "photos:160", load_target("cortex-a"), root / "opt", opts, name="kites",
                    declared=declared, labels=LABELS)


@pytest.fixture(scope="module")
def served(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("images")
    out = detector_bundle(root, {"image": {"size": [160, 160], "resize": "letterbox", "scale": 1 / 255},
                                 "postprocess": {"conf": 0.5}})
    from edgewise.zoo import corpus

    cls_model, data = corpus.build("mobilenetv3-small", root / "cls")
    cls = optimize(cls_model, data, load_target("cortex-a"), root / "cls-opt",
                   SearchOptions(only=("baseline-fused",), measure_memory=False, latency_runs=5),
                   name="photos-cls", labels=[f"scene{i}" for i in range(10)])
    agent = build_agent(AgentConfig(bundles=[out.bundle, cls.bundle], tier="server", data_dir=root / "agent"))
    yield TestClient(agent.app), out
    agent.close()


def test_the_bundle_declares_its_signal_path(served):
    _, out = served
    from edgewise.bundle import read_bundle

    m = read_bundle(out.bundle)
    assert m.task == "detection" and m.labels == LABELS
    assert m.preprocessing["image"]["resize"] == "letterbox" and m.preprocessing["image"]["size"] == [160, 160]
    assert m.postprocessing["kind"] == "detection" and m.postprocessing["conf"] == 0.5


def test_the_cli_takes_the_declaration_and_class_names_from_files(served, tmp_path):
    from edgewise.bundle import read_bundle
    from tests.test_cli import ew

    _, out = served
    (tmp_path / "pre.toml").write_text('[image]\nsize = [160, 160]\nresize = "letterbox"\n[postprocess]\nconf = 0.4\n')
    (tmp_path / "names.txt").write_text("cat\ndog\nkite\n")
    model = out.out.parent / "det.onnx"
    proc = ew("optimize", str(model), "--target", "cortex-a", "--data", "photos:160", "--out", str(tmp_path / "o"),
              "--recipe", "baseline-fused", "--task", "detection", "--preprocess", str(tmp_path / "pre.toml"),
              "--labels", str(tmp_path / "names.txt"))
    assert proc.returncode == 0, proc.stderr
    m = read_bundle(tmp_path / "o" / "bundle")
    assert m.labels == LABELS and m.postprocessing["conf"] == 0.4 and m.preprocessing["image"]["size"] == [160, 160]
    (tmp_path / "bad.toml").write_text("[imag]\nsize = 3\n")
    proc = ew("optimize", str(model), "--target", "cortex-a", "--data", "photos:160", "--out", str(tmp_path / "o2"),
              "--preprocess", str(tmp_path / "bad.toml"))
    assert proc.returncode == 1 and "unknown sections imag" in proc.stderr


def test_a_jpeg_gets_boxes_in_its_own_pixels(served):
    client, _ = served
    # 320x160: letterboxed to 160x80 at the middle of the frame (ratio 0.5, 40 px of padding above)
    r = client.post("/predict?model=kites", content=_jpeg(320, 160), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "detection" and body["image_size"] == [160, 320]
    (box,) = body["boxes"]  # the 0.1 one is under the declared 0.5
    assert box["label"] == "kite" and box["score"] == pytest.approx(0.9)
    # frame box (60, 50, 100, 70) -> original ((60-0)/0.5, (50-40)/0.5, (100-0)/0.5, (70-40)/0.5)
    assert box["box"] == [120.0, 20.0, 200.0, 60.0]
    r = client.post("/predict?model=kites", content=_jpeg(320, 160, "PNG"), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["boxes"][0]["box"] == [120.0, 20.0, 200.0, 60.0]


@pytest.mark.parametrize("body,fragment", [
    (b"", "empty"),
    (_jpeg(64, 64)[:200], "not a readable"),  # truncated
    (b"GIF89a" + b"\0" * 64, "not a readable"),
    (b"<svg/>", "not a readable"),
])
def test_bad_images_are_a_4xx(served, body, fragment):
    client, _ = served
    r = client.post("/predict?model=kites", content=body, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and fragment in r.json()["error"], r.text


def test_a_classifier_answers_a_jpeg_with_its_class_names(served):
    client, _ = served
    r = client.post("/predict?model=photos-cls", content=_jpeg(300, 200), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "classification" and body["label"].startswith("scene") and len(body["top"]) == 5
    assert body["top"][0]["label"] == body["label"] and 0 < body["score"] <= 1


def test_an_image_too_large_to_decode_is_refused_from_its_header():
    from PIL import Image

    from edgewise.errors import DataError

    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 MP, a few KB compressed
    with pytest.raises(DataError, match="over the 40,000,000"):
        decode(buf.getvalue())


def test_letterbox_and_stretch_follow_the_declaration():
    from PIL import Image

    im = Image.new("RGB", (200, 100), (255, 0, 0))
    p = prepare(im, ImageSpec(size=(100, 100), resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert p.tensor.shape == (1, 3, 100, 100) and p.offset == (25.0, 0.0)
    np.testing.assert_allclose(p.tensor[0, :, 50, 50], [1.0, -1.0, -1.0], atol=1e-6)  # red, normalised
    s = prepare(im, ImageSpec(size=(50, 100), resize="stretch", color="BGR", layout="NHWC"))
    assert s.tensor.shape == (1, 50, 100, 3) and s.tensor[0, 10, 10].tolist() == pytest.approx([0, 0, 1])
