"""Three real agent processes (endpoint -> node -> server) on loopback: cascade, offline, privacy, bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from edgewise.agent.forward.audit import AuditLog
from edgewise.agent.serve.cascade import RESULT_FIELDS
from edgewise.agent.forward.receiver import EventStore
from edgewise.data import load_splits

from ..harness import AgentProc, free_port, predict, wait_for

X = load_splits("digits").test.x
Y = load_splits("digits").test.y


@pytest.fixture
def tiers(tier_bundles, tmp_path):
    ports = {t: free_port() for t in ("endpoint", "node", "server")}
    server = AgentProc(["--bundle", str(tier_bundles["server"]), "--tier", "server"], ports["server"],
                       tmp_path / "server")
    node = AgentProc(["--bundle", str(tier_bundles["node"]), "--tier", "node", "--escalate", "raw",
                      "--upstream", f"http://127.0.0.1:{ports['server']}"], ports["node"], tmp_path / "node")
    endpoint = AgentProc(["--bundle", str(tier_bundles["endpoint"]), "--tier", "endpoint", "--escalate", "raw",
                          "--upstream", f"http://127.0.0.1:{ports['node']}"], ports["endpoint"], tmp_path / "endpoint")
    agents = {"server": server.start(), "node": node.start(), "endpoint": endpoint.start()}
    yield agents
    for a in agents.values():
        a.kill()


def test_cascade_answers_at_each_tier_and_results_flow_up(tiers):
    # Execute
    results = predict(tiers["endpoint"], X[:120])
    # Assert: confident answers stay at the endpoint, the rest climb; every answer says where it came from
    answered = {r["tier"] for r in results}
    assert "endpoint" in answered and answered & {"node", "server"}
    for r in results:
        assert r["tier"] == "endpoint" or r["escalated_from"] in ("endpoint", "node")
        assert r["tier"] == "endpoint" or r["score"] >= 0 and not r["degraded"]
    accuracy = np.mean([int(r["label"]) == y for r, y in zip(results, Y[:120])])
    assert accuracy > 0.85
    # results reach the node's event store through the endpoint's queue, holding no raw input
    node_events = EventStore(tiers["node"].data_dir / "events.db")
    wait_for(lambda: len(node_events) >= 120)
    for payload in node_events.payloads():
        assert set(json.loads(payload)) <= set(RESULT_FIELDS)


@pytest.mark.e2e
def test_node_killed_endpoint_degrades_queues_and_delivers_exactly_once_after_restart(tiers):
    # Prepare
    endpoint, node = tiers["endpoint"], tiers["node"]
    predict(endpoint, X[:10])
    node_events = EventStore(node.data_dir / "events.db")
    wait_for(lambda: len(node_events) >= 10)
    # Execute: the link to the node dies
    node.kill()
    offline = predict(endpoint, X[10:110])
    wait_for(lambda: endpoint.get("/health")["sync"]["online"] is False)  # the syncer's next attempt failed
    health = endpoint.get("/health")
    node.start()
    wait_for(lambda: endpoint.get("/health")["queue"]["depth"] == 0, timeout=60)
    # Assert
    unsure = [r for r in offline if r["tier"] == "endpoint" and r["degraded"]]
    assert unsure, "low-confidence answers were given locally and marked degraded"
    assert all(not r["degraded"] for r in offline if r["score"] >= 0.9)
    assert health["sync"]["online"] is False and health["queue"]["depth"] > 0
    keys = node_events.keys()
    assert len(keys) == len(set(keys)) == 110 + len(unsure), "results + review items, each exactly once"


def test_bad_requests_get_clear_4xx_and_the_agent_stays_up(tiers):
    e = tiers["endpoint"]
    cases = [
        (b"{not json", "application/json", 422, "not valid JSON"),
        (json.dumps({"inputs": [[1, 2, 3]]}).encode(), "application/json", 422, "expects [batch, 1, 8, 8]"),
        (json.dumps({"wrong": 1}).encode(), "application/json", 422, '"inputs"'),
        (json.dumps({"inputs": [[[[float("nan")] * 8] * 8]]}).encode(), "application/json", 422, "NaN"),
        (b"\x93NUMPY garbage", "application/x-npy", 422, ".npy"),
        (b"<xml/>", "text/xml", 415, "content type"),
    ]
    for body, ctype, code, fragment in cases:
        status, answer = e.post("/predict", body, ctype)
        assert status == code and fragment in answer["error"], (status, answer)
    status, answer = e.post("/predict?model=nope", b"{}")
    assert status == 404 and "unknown model" in answer["error"]
    buf = io.BytesIO()
    np.save(buf, X[:3])
    status, answer = e.post("/predict", buf.getvalue(), "application/x-npy")
    assert status == 200 and len(answer["results"]) == 3
    import urllib.request

    metrics = urllib.request.urlopen(e.url + "/metrics", timeout=10).read().decode()
    assert e.get("/health")["status"] == "ok" and "edgewise_errors_bad_input_total 5" in metrics


def test_default_privacy_policy_sends_results_only(tier_bundles, tmp_path):
    # Prepare: a node that keeps the default policy (no escalation with raw inputs)
    server = AgentProc(["--tier", "server"], free_port(), tmp_path / "server").start()
    node = AgentProc(["--bundle", str(tier_bundles["endpoint"]), "--tier", "node",
                      "--upstream", server.url], free_port(), tmp_path / "node").start()
    try:
        # Execute
        results = predict(node, X[:60])
        server_events = EventStore(tmp_path / "server" / "events.db")
        wait_for(lambda: len(server_events) >= 60)
    finally:
        node.kill()
        server.kill()
    # Assert: nothing was escalated, and what crossed holds no input values
    assert {r["tier"] for r in results} == {"node"}
    for payload in server_events.payloads():
        assert "inputs" not in json.loads(payload)
    audit = AuditLog(tmp_path / "node" / "audit.db").rows()
    assert audit and all(r["kind"] == "events" and "inputs" not in r["fields"] for r in audit)
    assert sum(r["items"] for r in audit) >= 60


@pytest.mark.e2e
def test_agent_kill_9_during_a_burst_loses_no_acknowledged_result(tier_bundles, tmp_path):
    """The endpoint is killed mid-burst while its upstream is down; after both come back, every result
    whose request was answered 200 reaches the node, and no result arrives twice."""
    import threading

    node_port, ep_port = free_port(), free_port()
    node = AgentProc(["--bundle", str(tier_bundles["node"]), "--tier", "node"], node_port, tmp_path / "node")
    endpoint = AgentProc(["--bundle", str(tier_bundles["endpoint"]), "--tier", "endpoint",
                          "--upstream", f"http://127.0.0.1:{node_port}"], ep_port, tmp_path / "endpoint").start()
    acked = []
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                status, _ = endpoint.post("/predict", json.dumps({"inputs": X[i % 300 : i % 300 + 1].tolist()}).encode())
            except OSError:
                return
            if status == 200:
                acked.append(i)
            i += 4

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 60)
    endpoint.kill()  # SIGKILL in the middle of the burst
    stop.set()
    for t in threads:
        t.join()
    n_acked = len(acked)
    node.start()
    endpoint.start()
    node_events = EventStore(tmp_path / "node" / "events.db")
    try:
        wait_for(lambda: endpoint.get("/health")["queue"]["depth"] == 0, timeout=60)
    finally:
        endpoint.kill()
        node.kill()
    keys = node_events.keys()
    assert len(keys) == len(set(keys)), "nothing delivered twice"
    assert len(keys) >= n_acked, f"{n_acked} results were acknowledged, {len(keys)} arrived"


class CapturingProxy:
    """A loopback HTTP hop that records every body on its way to the tier above: what actually crossed."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading
        import urllib.request

        self.bodies: list[tuple[str, bytes]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.bodies.append((self.path, body))
                req = urllib.request.Request(target + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items()
                                                      if k in ("Content-Type", "Content-Encoding")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_features_mode_sends_embeddings_never_raw_inputs(tier_bundles, tmp_path):
    # Prepare: the node serves the tail of the endpoint's model; the endpoint escalates unsure samples
    # as their embedding, through a proxy that keeps what crossed
    import onnx
    import onnxruntime as ort

    from edgewise.bundle.split import split_bundle
    from edgewise.modelio import embedding_tensor, expose

    split_bundle(tier_bundles["endpoint"], tmp_path / "tail")
    node = AgentProc(["--bundle", str(tmp_path / "tail"), "--tier", "node"], free_port(), tmp_path / "node").start()
    proxy = CapturingProxy(node.url)
    (tmp_path / "endpoint.toml").write_text('[privacy]\nescalate = "features"\n\n[cascade]\ndefault_threshold = 0.99\n')
    endpoint = AgentProc(["--bundle", str(tier_bundles["endpoint"]), "--tier", "endpoint", "--upstream", proxy.url,
                          "--config", str(tmp_path / "endpoint.toml")], free_port(), tmp_path / "endpoint").start()
    try:
        # Execute
        results = predict(endpoint, X[:80])
        wait_for(lambda: any(p == "/v1/events" for p, _ in proxy.bodies))
    finally:
        endpoint.kill()
        node.kill()
        proxy.close()
    # Assert: some samples went up and were answered by the node's tail, exactly as the whole model would
    whole = onnx.load(str(tier_bundles["endpoint"] / "model.onnx"))
    sess = ort.InferenceSession(expose(whole, embedding_tensor(whole)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    logits, features = sess.run(None, {sess.get_inputs()[0].name: X[:80]})
    escalated = [i for i, r in enumerate(results) if r["tier"] == "node"]
    assert 0 < len(escalated) < 80
    assert all(results[i]["class"] == int(logits[i].argmax()) for i in escalated)
    # What crossed: embeddings of exactly the escalated samples, addressed to the tail; no raw input row
    sent = [np.load(io.BytesIO(b)) for p, b in proxy.bodies if p.startswith("/predict")]
    assert all(p == "/predict?model=digits-tail" for p, _ in proxy.bodies if p.startswith("/predict"))
    rows = np.concatenate(sent)
    np.testing.assert_allclose(rows, features[escalated], rtol=1e-5, atol=1e-5)
    raw = X[:80].reshape(80, -1)
    crossed = b"".join(b for _, b in proxy.bodies)
    assert not any(np.allclose(r, x) for r in rows for x in raw if r.shape == x.shape)
    assert X[escalated[0]].astype(np.float32).tobytes()[:64] not in crossed
    audit = AuditLog(tmp_path / "endpoint" / "audit.db").rows()
    assert {tuple(r["fields"]) for r in audit if r["kind"] == "escalation"} == {("features", "model")}
