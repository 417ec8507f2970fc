"""A practitioner's own text recognizer end to end: PaddleOCR's PP-OCRv4 recognizer exported without its
alphabet (as paddle2onnx writes it), their crops in PaddleOCR's label format, their character dictionary
through --labels. The search scores it against their texts, and the device answers a photo of a line with
its text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from edgewise.agent.runner import AgentConfig, build_agent
from edgewise.bundle import read_bundle
from edgewise.zoo.corpus import rapidocr_model

from ..data.test_ocrlabels import write_lines
from ..harness import ew, free_port

WORDS = ["invoice total", "gate A113", "battery voltage", "serial number", "hello world", "firmware 2026",
         "shipping address", "price", "station ID-4471", "warning", "order quantity", "edge sensor"]


@pytest.fixture(scope="module")
def user_recognizer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PP-OCRv4 rec with its `character` metadata moved out into a dictionary file, one character per line."""
    root = tmp_path_factory.mktemp("ocr")
    model = onnx.load(str(rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")))
    chars = next(p.value for p in model.metadata_props if p.key == "character")
    del model.metadata_props[:]
    onnx.save(model, str(root / "rec.onnx"))
    (root / "ppocr_keys_v1.txt").write_text(chars, encoding="utf-8")
    return {"model": root / "rec.onnx", "keys": root / "ppocr_keys_v1.txt", "labels": write_lines(root, WORDS * 3),
            "root": root}


def _cer(read: str, truth: str) -> float:
    from edgewise.profile.fidelity import _edit_distance

    return _edit_distance(tuple(read), tuple(truth)) / len(truth)


@pytest.mark.e2e
def test_their_recognizer_is_scored_on_their_texts_and_the_device_reads_a_photo_of_a_line(user_recognizer):
    u = user_recognizer
    out = u["root"] / "opt"
    proc = ew("optimize", str(u["model"]), "-t", "edge-node", "-d", str(u["labels"]), "--labels", str(u["keys"]),
              "-o", str(out), "--recipe", "baseline-fused", "--no-measure-memory")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    # scored against the texts in the label file, with the dictionary as the alphabet (blank first, space last)
    assert report["accuracy_kind"] == "char_accuracy", report["accuracy_kind"]
    assert report["final"]["accuracy"] >= 0.9, report["final"]
    # bench takes the dictionary too: the starting model and the bundle, both read against the texts
    proc = ew("bench", str(u["model"]), str(out / "bundle"), "-d", str(u["labels"]), "--labels", str(u["keys"]),
              "--runs", "5", "--batch", "1", "--json", str(u["root"] / "bench.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((u["root"] / "bench.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["fidelity_kind"] for r in rows] == ["char_accuracy"] * 2 and "1 - CER" in proc.stdout, proc.stdout
    manifest = read_bundle(out / "bundle")
    keys = u["keys"].read_text(encoding="utf-8").splitlines()
    assert manifest.task == "ctc" and manifest.postprocessing == {"kind": "ctc"}
    assert manifest.labels == ["", *keys, " "]
    assert manifest.preprocessing["image"]["resize"] == "height" and manifest.preprocessing["image"]["size"] == [48, 320]
    # the device: a photo of a line in, its text out (and queued upstream as text, never the picture)
    # its upstream is down (nothing listens there): the texts wait in its queue
    agent = build_agent(AgentConfig(bundles=[out / "bundle"], tier="node", data_dir=u["root"] / "agent",
                                    upstream=f"http://127.0.0.1:{free_port()}"))
    try:
        client = TestClient(agent.app)
        reads = []
        for i in (0, 4, 8):  # lines the label file lists: the device decodes them as evaluation did
            r = client.post("/predict", content=(u["root"] / f"crops/line_{i:03d}.jpg").read_bytes(),
                            headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["task"] == "ctc" and 0 < body["score"] <= 1 and body["image_size"][0] > 20
            reads.append((body["text"].strip(), WORDS[i]))
        assert sum(_cer(a, b) for a, b in reads) / len(reads) <= 0.1 and any(a == b for a, b in reads), reads
        deadline = time.monotonic() + 10
        while len(queued := [json.loads(i.payload) for i in agent.queue.peek(100) if i.topic == "text"]) < 3:
            assert time.monotonic() < deadline, queued
            time.sleep(0.05)
        assert [q["text"].strip() for q in queued] == [a for a, _ in reads] and set(queued[0]) == {"m", "v", "ts", "text", "s"}
        # a tensor in gets the text too, one per line
        tensor = client.post("/predict", json={"inputs": [[[[0.0] * 320] * 48] * 3]})
        assert tensor.status_code == 200 and tensor.json()["results"][0]["text"] == "", tensor.text
    finally:
        agent.close()


@pytest.mark.e2e
def test_without_its_dictionary_the_report_says_how_to_score_it_against_the_texts(user_recognizer):
    from edgewise.data import load_splits
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source
    from edgewise.targets import load_target

    u = user_recognizer
    src, splits = fit_data(load_source(u["model"]), load_splits(str(u["labels"])))
    opts = SearchOptions(only=("baseline-fused",), measure_memory=False, latency_runs=3)
    result = search(src, splits, load_target("edge-node"), opts)
    assert result.baseline.metrics["fidelity_kind"] == "cer_agreement" and result.task.alphabet is None
    assert any("carries no alphabet; pass its character dictionary with --labels" in n for n in result.notes), result.notes
    src.labels = ["a", "b"]  # a dictionary that is not this model's
    result = search(src, splits, load_target("edge-node"), opts)
    assert any("the 2 labels given do not fit its 6625 classes" in n for n in result.notes), result.notes


def test_the_direction_classifier_answers_a_photo_of_a_line_turned_over_with_180(rapidocr_cls, user_recognizer):
    """PaddleOCR's direction classifier, optimized on the bundled lines, gets their preprocessing in its bundle:
    the device turns a photo of a line into its input as the lines were, and tells upright from upside down."""
    import io

    from PIL import Image

    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target

    root = user_recognizer["root"] / "cls"
    opts = SearchOptions(only=("baseline-fused",), measure_memory=False, latency_runs=3)
    outcome = optimize(rapidocr_cls, "textlines:60", load_target("cortex-a"), root / "opt", opts)
    image = read_bundle(outcome.bundle).preprocessing["image"]
    assert image["resize"] == "height" and image["size"] == [48, 192] and image["mean"] == [0.5] * 3
    agent = build_agent(AgentConfig(bundles=[outcome.bundle], tier="server", data_dir=root / "agent"))
    try:
        client = TestClient(agent.app)
        said = {}
        for i in (0, 1, 2):
            im = Image.open(user_recognizer["root"] / f"crops/line_{i:03d}.jpg")
            for turn in (0, 180):
                buf = io.BytesIO()
                im.rotate(turn).save(buf, "PNG")
                r = client.post("/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                said[(i, turn)] = r.json()["label"]
        assert all(label == str(turn) for (_, turn), label in said.items()), said
    finally:
        agent.close()
