"""The agent serves what `optimize` bundles for any model: several inputs of several dtypes, several
outputs, detectors; it answers every output by name and adds labels only for classifiers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgewise.agent.runner import AgentConfig, build_agent
from edgewise.optimize.pipeline import optimize
from edgewise.optimize.search import SearchOptions
from edgewise.targets import load_target
from edgewise.zoo import corpus


def _serve(root, names: tuple[str, ...]):  # type: ignore[no-untyped-def]
    opts = SearchOptions(latency_runs=10, measure_memory=False, only=("baseline-fused",), sensitivity_max_layers=0)
    bundles = []
    for name in names:
        model, data = corpus.build(name, root / name)
        outcome = optimize(model, data, load_target("cortex-a"), root / f"opt-{name}", opts, name=name)
        bundles.append(outcome.bundle)
    return build_agent(AgentConfig(bundles=bundles, tier="server", data_dir=root / "agent"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A streaming GRU: features, state in and out, an int64 step counter."""
    agent = _serve(tmp_path_factory.mktemp("any-model"), ("gru-stream",))
    yield TestClient(agent.app)
    agent.close()


@pytest.fixture(scope="module")
def served_detector(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """YOLOv8n through the whole pipeline (6 s of it is optimizing a detector: an e2e test's fixture)."""
    agent = _serve(tmp_path_factory.mktemp("any-detector"), ("yolov8n",))
    yield TestClient(agent.app)
    agent.close()


def _gru_feed(step: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {"feats": rng.standard_normal((1, 49, 40)).round(3).tolist(),
            "state": np.zeros((1, 1, 64)).tolist(), "step": step}


def test_a_multi_input_model_answers_every_output_by_name(served):
    r = served.post("/predict?model=gru-stream", json={"inputs": _gru_feed()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "regression" and "results" not in body  # no softmax over a state
    out = body["outputs"]
    assert set(out) == {"logits", "state_out"}
    assert out["logits"]["shape"] == [1, 12] and out["state_out"]["shape"] == [1, 1, 64]
    assert out["state_out"]["dtype"] == "float32"
    # the same feed as an .npz body, the answer as an .npz
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.int64 if k == "step" else np.float32) for k, v in _gru_feed().items()})
    r2 = served.post("/predict?model=gru-stream", content=buf.getvalue(),
                     headers={"content-type": "application/x-npz", "accept": "application/x-npz"})
    assert r2.status_code == 200 and r2.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(r2.content)) as f:
        np.testing.assert_allclose(f["logits"], np.asarray(out["logits"]["data"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inputs,message", [
    ({"feats": np.zeros((1, 49, 40)).tolist(), "state": np.zeros((1, 1, 64)).tolist()}, "missing input(s) step"),
    ({**_gru_feed(), "mood": 1}, "no input(s) named mood"),
    ({**_gru_feed(), "state": np.zeros((1, 2, 64)).tolist()}, "input 'state' has shape [1, 2, 64]"),
    ({**_gru_feed(), "step": 2.5}, "input 'step' takes int64"),
    ({**_gru_feed(), "feats": [[["x"]]]}, "input 'feats' must hold numbers"),
])
def test_bad_multi_input_requests_name_the_input(served, inputs, message):
    r = served.post("/predict?model=gru-stream", json={"inputs": inputs})
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_a_single_array_for_a_multi_input_model_says_how_to_send_it(served):
    r = served.post("/predict?model=gru-stream", json={"inputs": [[1.0, 2.0]]})
    assert r.status_code == 422 and "has 3 inputs" in r.json()["error"]


@pytest.mark.e2e
def test_a_detector_gets_its_raw_head_not_a_softmax_over_box_coordinates(served_detector):
    served = served_detector
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 160, 160)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    r = served.post("/predict?model=yolov8n", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "detection" and "results" not in body
    assert body["outputs"]["output0"]["shape"] == [1, 84, 525]
