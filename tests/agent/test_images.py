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


def _constant_detector(cls: int = 2, score: float = 0.9, box: tuple = (80, 60, 40, 20)) -> onnx.ModelProto:
    """A YOLO-style [1, 4+3, 64] head that always finds one 'kite' at (cx 80, cy 60, w 40, h 20) in the
    160x160 letterboxed frame, whatever the image (plus 0 x the image, so the image is its input)."""
    head = np.zeros((1, 7, 64), np.float32)
    head[0, 2:4] = 1.0
    head[0, :4, 5] = box
    head[0, 4 + cls, 5] = score
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


def detector_bundle(root: Path, declared: dict | None = None, **head):  # type: ignore[no-untyped-def]
    """The constant detector, optimized (fused only) into a bundle named kites with LABELS."""
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(_constant_detector(**head), str(root / "det.onnx"))
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
    from tests.harness import ew

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


@pytest.mark.e2e  # several seconds: in `make test`, out of `make test-fast`
def test_an_unsure_detection_goes_up_as_a_crop_and_the_answer_replaces_it(tmp_path):
    """Endpoint: the kite detector (0.9 < threshold 0.95), escalate = raw. Node (a real process): a model
    of the same name that always sees a 'dog' at 0.99, box (60, 70, 100, 90) in its 160x160 frame."""
    import json

    from tests.harness import AgentProc, free_port

    decl = {"image": {"size": [160, 160], "resize": "letterbox", "scale": 1 / 255}, "postprocess": {"conf": 0.5}}
    node_bundle = detector_bundle(tmp_path / "node", decl, cls=1, score=0.99, box=(80, 80, 40, 20)).bundle
    end_bundle = detector_bundle(tmp_path / "end", decl).bundle
    node = AgentProc(["--bundle", str(node_bundle), "--tier", "node"], free_port(), tmp_path / "node-data").start()
    cfg = dict(bundles=[end_bundle], tier="endpoint", upstream=node.url, default_threshold=0.95)
    try:
        # the policy's default keeps pixels home: the unsure box stays ours, counted as blocked
        agent = build_agent(AgentConfig(**cfg, data_dir=tmp_path / "a0"))
        (box,) = TestClient(agent.app).post("/predict", content=_jpeg(320, 160),
                                            headers={"content-type": "image/jpeg"}).json()["boxes"]
        assert box["label"] == "kite" and box["tier"] == "endpoint" and agent.inference.counts["blocked_by_policy"] == 1
        agent.close()
        agent = build_agent(AgentConfig(**cfg, escalate="raw", data_dir=tmp_path / "a1"))
        client = TestClient(agent.app)
        r = client.post("/predict", content=_jpeg(320, 160), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        (box,) = r.json()["boxes"]
        # ours: (120, 20, 200, 60) in the 320x160 picture; the crop is 2.5 x 80 = 200 px square around its
        # centre (160, 40), clipped: x 60..261, y 0..141 (201 x 141). The node letterboxes that into 160x160
        # (160 x 112 at ratio 160/201, 24 px of padding above) and finds (60, 70, 100, 90): (75.4, 57.9,
        # 125.6, 83.1) in the crop, (135.4, 57.9, 185.6, 83.1) in the picture.
        assert box["label"] == "dog" and box["score"] == pytest.approx(0.99) and box["tier"] == "node"
        assert box["escalated_from"] == "endpoint"
        assert box["box"] == pytest.approx([135.4, 57.9, 185.6, 83.1], abs=0.25)
        assert agent.inference.counts["escalated"] == 1 and agent.inference.counts["local"] == 0
        # the link goes: ours is kept, marked degraded, and the crop waits for review (escalate allows it)
        node.kill()
        (box,) = client.post("/predict", content=_jpeg(320, 160), headers={"content-type": "image/jpeg"}).json()["boxes"]
        assert box["label"] == "kite" and box["degraded"] and agent.inference.counts["review_queued"] == 1
        # what crossed, from the audit log: one crop, delivered; one more, failed (the link was down)
        rows = [r for r in agent.audit.rows() if r["kind"] == "escalation"]
        assert [(r["fields"], r["items"], r["status"]) for r in rows] == [
            (["crop_jpeg", "model"], 1, "delivered"), (["crop_jpeg", "model"], 1, "failed")], rows
        # what waits to go up: each answer's boxes (never the picture) and the review crop
        queued = {}
        for item in agent.queue.peek(100):
            queued.setdefault(item.topic, []).append(json.loads(item.payload))
        agent.close()
        assert [[b["label"] for b in e["boxes"]] for e in queued["detection"]] == [["dog"], ["kite"]]
        assert set(queued["detection"][0]) == {"m", "v", "ts", "boxes"} and len(queued["review"]) == 1
    finally:
        node.kill()


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_boxes_still_map_to_its_pixels():
    from edgewise.media.image import fitted_size

    spec = ImageSpec(size=(96, 96), resize="letterbox")
    raw = _jpeg(640, 480)
    small = decode(raw, spec)
    assert small.size == (160, 120) and small.info["original_size"] == (640, 480)  # DCT scaling 1/4, >= 96x72
    assert decode(raw).size == (640, 480) and fitted_size(640, 480, spec) == (96, 72)
    fast, full = prepare(small, spec), prepare(decode(raw), spec)
    assert fast.original == full.original == (480, 640) and fast.ratio == full.ratio and fast.offset == full.offset
    box = np.array([[10.0, 22.0, 50.0, 60.0]])
    np.testing.assert_allclose(fast.to_original(box), full.to_original(box))
    # the pixels differ only by the decoder's downscaling: close, not equal
    assert np.abs(fast.tensor - full.tensor).mean() < 0.05
    png = _jpeg(640, 480, "PNG")  # PNG has no reduced-scale decode: decoded in full
    assert decode(png, spec).size == (640, 480)
