"""Regression tests for the agent under hostile input and faults: each failure once found, now refused
with a 4xx (or survived) and nothing lost or garbled."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient

from edgewise.agent.forward.audit import AuditingUpstream, AuditLog
from edgewise.agent.forward.queue import DurableQueue, NewItem
from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.runner import AgentConfig, build_agent
from edgewise.agent.serve.service import MAX_BODY_BYTES, create_app
from edgewise.agent.forward.sync import Syncer
from edgewise.agent.forward.upstream import InProcessUpstream
from edgewise.data import load_splits

X = load_splits("digits").test.x


@pytest.fixture(scope="module")
def server(tier_bundles, tmp_path_factory):  # type: ignore[no-untyped-def]
    agent = build_agent(AgentConfig(bundles=[tier_bundles["server"]], tier="server",
                                    data_dir=tmp_path_factory.mktemp("hard")))
    yield TestClient(agent.app)
    agent.close()


def _npy(shape_text: str, payload: bytes = b"") -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("body,ctype,fragment", [
    (b"[" * 3000 + b"]" * 3000, "application/json", "nested too deeply"),
    (b'{"inputs": "\xff\xfe"}', "application/json", "not UTF-8"),
    (b'{"inputs": [' + b"9" * 5000 + b"]}", "application/json", "not acceptable JSON"),
    (b'{"inputs": [' + b"9" * 400 + b"]}", "application/json", "rectangular array of numbers"),
    (_npy("(1000000000000,)"), "application/x-npy", "declares"),
    (b"PK\x03\x04 not a zip", "application/x-npz", ".npz"),
])
def test_hostile_predict_bodies_get_a_4xx(server, body, ctype, fragment):
    r = server.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == 422 and fragment in r.json()["error"], (r.status_code, r.text[:300])


def test_a_chunked_body_over_the_cap_is_a_413_and_the_agent_answers_after(server):
    def chunks():  # no Content-Length: the cap must hold as the body arrives
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    r = server.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = server.post("/predict", json={"inputs": X[:2].tolist()})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_samples_for_a_model_nobody_serves_are_refused_and_labels_are_range_checked(server):
    r = server.post("/v1/samples?model=junk", json={"inputs": X[:1].tolist(), "labels": [0]})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    r = server.post("/v1/samples", json={"inputs": X[:1].tolist(), "labels": [10**30]})
    assert r.status_code == 422 and "out of range" in r.json()["error"]
    r = server.post("/v1/samples", json={"inputs": X[:2].tolist(), "labels": [1, 2]})
    assert r.status_code == 200 and r.json()["total"] >= 2


@pytest.mark.parametrize("event,fragment", [
    ({"key": "a", "topic": "result", "json": {}, "priority": 10**30}, "priority"),
    ({"key": "b", "topic": "result", "json": {}, "created": float("inf")}, "created"),
    ({"key": "\ud800", "topic": "result", "json": {}}, "UnicodeEncodeError"),
    ({"key": ["x"], "topic": "result", "json": {}}, "key must be a string"),
])
def test_malformed_event_batches_are_a_400_and_leave_no_transaction_open(server, event, fragment):
    body = json.dumps({"events": [event]}, allow_nan=True).encode("utf-8", "surrogatepass")
    r = server.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    good = json.dumps({"events": [{"key": f"ok-{fragment}", "topic": "result", "json": {"l": "1"}}]}).encode()
    r = server.post("/v1/events", content=good, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["stored"] == 1


def test_a_gzip_bomb_is_refused_without_expanding_it(server):
    bomb = gzip.compress(b"[" + b" " * (80 << 20) + b"]")  # 80 MiB of spaces in ~80 KB
    assert len(bomb) < MAX_BODY_BYTES
    r = server.post("/v1/events", content=bomb, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "expands past" in r.json()["error"]


def test_a_full_audit_log_pauses_sending_and_health_says_so_until_space_returns(tmp_path):
    """SQLite's own 'database or disk is full' (max_page_count pinned to the file's size) on the audit log:
    the sync thread must survive it, send nothing it cannot record, and resume by itself."""
    received = EventStore(tmp_path / "rx.db")
    queue = DurableQueue(tmp_path / "q.db")
    audit = AuditLog(tmp_path / "audit.db")
    syncer = Syncer(queue, AuditingUpstream(InProcessUpstream(received), audit, "up"), base_backoff_s=0.01,
                    max_backoff_s=0.05, idle_poll_s=0.05, linger_s=0.0)
    app = TestClient(create_app(syncer=syncer, queue=queue, tier="endpoint"))
    pages = audit._db.execute("PRAGMA page_count").fetchone()[0]
    audit._db.execute(f"PRAGMA max_page_count = {pages}")
    for size in (3000, 300, 30, 0):  # fill the last pages to the brim, so no further row fits
        while True:
            try:
                audit._db.execute("INSERT INTO audit VALUES (0, 'fill', '', ?, 0, 0, 'fill', 0)", ("x" * size,))
            except sqlite3.OperationalError:
                break
    syncer.start()
    queue.append_many([NewItem(f'{{"n":{i}}}'.encode(), topic="result") for i in range(50)])
    syncer.notify()
    deadline = time.time() + 10
    while syncer.stats.storage_errors < 3 and time.time() < deadline:
        time.sleep(0.02)
    health = app.get("/health").json()
    assert syncer.alive and len(received) == 0, "nothing may leave without its audit row"
    assert health["status"].startswith("degraded") and "audit log" in health["status"]
    audit._db.execute("DELETE FROM audit WHERE kind = 'fill'")  # space is back
    audit._db.execute("PRAGMA max_page_count = 1073741823")
    deadline = time.time() + 10
    # the upstream holds the items a moment before the sync thread returns and clears its failing state
    while (len(received) < 50 or syncer.stats.failing) and time.time() < deadline:
        time.sleep(0.02)
    assert len(received) == 50 and app.get("/health").json()["status"] == "ok"
    syncer.stop()
    delivered = [r for r in audit.rows() if r["status"] == "delivered"]
    assert sum(r["items"] for r in delivered if not r["retry"]) == 50


def test_trusted_agents_refuse_forged_bundles_and_swapped_models(tier_bundles, tmp_path):
    from edgewise.bundle.signing import generate_keys, sign_bundle, load_private
    from edgewise.errors import AgentError

    priv, pub = generate_keys(tmp_path / "keys")
    bundle = tmp_path / "b"
    shutil.copytree(tier_bundles["endpoint"], bundle)
    with pytest.raises(AgentError, match="signature"):
        build_agent(AgentConfig(bundles=[bundle], data_dir=tmp_path / "a0", trust=[pub]))
    sign_bundle(bundle, load_private(priv))
    agent = build_agent(AgentConfig(bundles=[bundle], data_dir=tmp_path / "a1", trust=[pub]))
    shutil.copyfile(tier_bundles["server"] / "model.onnx", bundle / "model.onnx")  # swapped after the check
    r = TestClient(agent.app).post("/predict", json={"inputs": X[:1].tolist()})
    assert r.status_code != 200 and "changed since" in r.text
    agent.close()


@pytest.mark.e2e
def test_idle_connections_are_closed_and_never_starve_health(tier_bundles, tmp_path):
    """1,030 connections that never sent a byte once took every descriptor: a real agent process now closes
    them after its idle timeout and answers /health meanwhile."""
    import socket
    import urllib.request

    from ..harness import AgentProc, free_port

    IDLE_TIMEOUT_S = 2  # the default is 5; the operator sets it in agent.toml
    (tmp_path / "agent.toml").write_text(f"idle_timeout_s = {IDLE_TIMEOUT_S}\n")
    agent = AgentProc(["--tier", "server", "--bundle", str(tier_bundles["server"]), "--config",
                       str(tmp_path / "agent.toml")], free_port(), tmp_path).start()
    socks = []
    try:
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
            socks.append(s)
        health = urllib.request.urlopen(agent.url + "/health", timeout=10).read()
        assert b'"status":"ok"' in health
        time.sleep(IDLE_TIMEOUT_S + 2)
        import selectors

        sel = selectors.DefaultSelector()  # epoll: select() stops at descriptor 1024
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        ready = sel.select(timeout=2.0)  # a closed connection reads as end-of-file at once
        closed = sum(key.fileobj.recv(1) == b"" for key, _ in ready)
        sel.close()
        assert closed == len(socks), f"{len(socks) - closed} idle connections still open"
    finally:
        for s in socks:
            s.close()
        agent.kill()


@pytest.mark.e2e
def test_a_client_trickling_header_bytes_is_cut_off(tier_bundles, tmp_path):
    """Slowloris: one header byte a second keeps a connection busy forever unless headers have a deadline."""
    import socket
    import urllib.request

    from ..harness import AgentProc, free_port

    HEADER_TIMEOUT_S = 3  # the default is 10; the operator sets it in agent.toml
    (tmp_path / "agent.toml").write_text(f"header_timeout_s = {HEADER_TIMEOUT_S}\n")
    agent = AgentProc(["--tier", "server", "--bundle", str(tier_bundles["server"]), "--config",
                       str(tmp_path / "agent.toml")], free_port(), tmp_path).start()
    try:
        s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
        start, closed = time.time(), False
        s.sendall(b"GET /health HTTP/1.1\r\n")
        while time.time() - start < HEADER_TIMEOUT_S + 6:
            try:
                s.sendall(b"X")
                s.settimeout(1.0)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.time() - start < HEADER_TIMEOUT_S + 4
        assert b'"status":"ok"' in urllib.request.urlopen(agent.url + "/health", timeout=5).read()
        # a normal keep-alive client making requests back to back is not cut off
        import http.client

        c = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
        for _ in range(3):
            c.request("GET", "/health")
            assert c.getresponse().read()
            time.sleep(1)
        c.close()
    finally:
        agent.kill()
