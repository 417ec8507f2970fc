"""The fleet server against hostile or careless clients: every odd body a 4xx, the health gate not fooled
by one device, the rate limiter not bypassed by made-up credentials, and rollbacks across model names."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from edgewise.fleet.server import ServerConfig, build_store, create_app
from edgewise.fleet.store import Gate

ADMIN = "hostile-admin-token"


@pytest.fixture
def fleet_app(fleet_kit, tmp_path):  # type: ignore[no-untyped-def]
    cfg = ServerConfig(data_dir=tmp_path / "fleet", trust=[fleet_kit["pub"]], admin_token=ADMIN)
    return TestClient(create_app(cfg)), cfg


def _enrolled(client: TestClient) -> dict[str, str]:
    token = client.post("/v1/admin/enroll-tokens", json={"tags": ["t"]},
                        headers={"authorization": f"Bearer {ADMIN}"}).json()["token"]
    dev = client.post("/v1/device/enroll", json={"token": token, "name": "d"}).json()
    return {"authorization": f"Bearer {dev['device_id']}.{dev['secret']}"}


@pytest.mark.parametrize("path,body,admin", [
    ("/v1/device/report", {"step": "health", "ok": True, "serial": [1]}, False),
    ("/v1/device/report", {"step": "health", "ok": True, "serial": {"a": 1}}, False),
    ("/v1/device/report", {"step": "health", "ok": True, "serial": 10**30}, False),
    ("/v1/admin/enroll-tokens", {"ttl_s": "NaN"}, True),
    ("/v1/admin/enroll-tokens", {"ttl_s": "soon"}, True),
    ("/v1/admin/enroll-tokens", {"count": "many"}, True),
    ("/v1/admin/rollouts", {"model": "m", "version": "1.0.0", "gate": {"max_error_rate": "high"}}, True),
    ("/v1/admin/rollouts", {"model": "m", "version": "1.0.0", "gate": {"wave_timeout_s": float("inf")}}, True),
])
def test_odd_fields_are_a_400(fleet_app, path, body, admin):
    client, _ = fleet_app
    headers = {"authorization": f"Bearer {ADMIN}"} if admin else _enrolled(client)
    r = client.post(path, content=json.dumps(body, allow_nan=True), headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)


def test_deep_json_and_chunked_bodies_over_the_cap_are_refused(fleet_app):
    client, _ = fleet_app
    r = client.post("/v1/device/enroll", content=b"[" * 1500 + b"]" * 1500, headers={"content-type": "application/json"})
    assert r.status_code == 400

    def chunks():  # no Content-Length
        for _ in range(10):
            yield b" " * 1024

    r = client.post("/v1/device/enroll", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and client.get("/health").status_code == 200


def test_made_up_credentials_share_their_address_bucket_and_buckets_stay_bounded(fleet_app):
    client, _ = fleet_app
    codes = [client.get("/v1/device/assignment", headers={"authorization": f"Bearer fake{i}.x"}).status_code
             for i in range(150)]
    assert 429 in codes, "a new made-up credential per request must not get a fresh bucket"


def test_idle_rate_limit_buckets_are_swept():
    from edgewise.httplimits import Limit, Limiter

    limiter = Limiter({"c": Limit(1e9, 10, 1)}, lambda _p: "c")  # refills at once: every bucket is idle
    limiter.MAX_BUCKETS = 100
    for i in range(5000):
        assert limiter.allow("c", f"client-{i}")
    assert len(limiter._buckets) <= 101


def test_the_health_gate_weighs_each_device_once_and_clamps_rates(fleet_kit, tmp_path):
    store = build_store(ServerConfig(data_dir=tmp_path / "f", trust=[fleet_kit["pub"]], admin_token=ADMIN))
    with store.db.tx() as t:
        for d in ("good", "bad"):
            t.execute("INSERT INTO assignments (device_id, serial, rollout_id, model, version, rollback, status, "
                      "detail, updated) VALUES (?,1,'r','m','1.0.0',0,'healthy','',0)", (d,))
    for _ in range(200):  # one device floods the gate with perfect reports
        store.report("good", {"step": "health", "ok": True, "error_rate": 0.0, "serial": 1})
    store.report("bad", {"step": "health", "ok": True, "error_rate": 0.9, "serial": 1})
    store.report("bad", {"step": "health", "ok": True, "error_rate": -10, "serial": 1})  # clamped to 0
    with store.db.tx() as t:
        verdict = store._judge(t, "r", Gate(max_error_rate=0.05), started=0.0)
    # per device: good 0.0, bad (0.9 + 0) / 2 = 0.45 -> fleet mean 0.225 > 0.05
    assert verdict and "mean error rate 0.225" in verdict


def test_a_rollback_restores_that_models_previous_version_and_never_touches_another_model(fleet_kit, tmp_path):
    from dataclasses import replace

    from edgewise.bundle import read_bundle, write_bundle
    from edgewise.bundle.archive import pack
    from edgewise.bundle.signing import load_private, sign_bundle

    store = build_store(ServerConfig(data_dir=tmp_path / "f", trust=[fleet_kit["pub"]], admin_token=ADMIN))
    a = fleet_kit["bundles"]["1.0.0"]
    other = tmp_path / "other"  # the same network published under another name: a second model on the devices
    write_bundle(other, replace(read_bundle(a), name="other", version="2.0.0", files={}, created=""),
                 {n: a / n for n in read_bundle(a).files})
    sign_bundle(other, load_private(fleet_kit["key"]))
    for bundle in (a, fleet_kit["bundles"]["1.1.0"], other):
        store.add_model(pack(bundle), "test")
    ids = [store.enroll(store.enroll_token(["cams"]), f"d{i}")["device_id"] for i in range(3)]
    # d0 ran digits 1.0.0; d1 never ran digits; d2 ran a digits the registry no longer has
    for dev, version in ((ids[0], "1.0.0"), (ids[2], "0.9.0")):
        store.report(dev, {"step": "health", "ok": True, "model": "digits", "active_version": version})
    r_other = store.create_rollout("other", "2.0.0", "cams", [100], None, False, "test")
    store.db.execute("UPDATE assignments SET status='healthy' WHERE rollout_id=?", (r_other["id"],))
    store.tick(r_other["id"])
    r = store.create_rollout("digits", "1.1.0", "cams", [100], None, False, "test")
    store.db.execute("UPDATE assignments SET status='healthy' WHERE rollout_id=?", (r["id"],))
    # Execute
    after = store.control(r["id"], "rollback")
    # Assert: only d0 goes back, to digits 1.0.0; the others are counted with the reason; "other" untouched
    back = store.db.query("SELECT device_id, model, version FROM assignments WHERE rollout_id=? AND rollback=1",
                          (r["id"],))
    assert back == [(ids[0], "digits", "1.0.0")]
    assert "no earlier version of digits on record" in after["reason"] and "digits 0.9.0 is not in" in after["reason"]
    slots = {m["model"]: (m["version"], m["rollback"]) for m in store.assignment(ids[0])["assignment"]["models"]}
    assert slots == {"digits": ("1.0.0", True), "other": ("2.0.0", False)}
    assert store.rollout(r_other["id"])["state"] == "completed"


GOOD_ENTRY = {"model": "m", "version": "1.0.0", "sha256": "ab" * 32, "size": 1000, "url": "http://x/b",
              "rollback": False, "serial": 3}


@pytest.mark.parametrize("field,value", [("version", 2), ("serial", "7"), ("size", 2**40), ("sha256", "zz" * 32),
                                         ("rollback", "yes"), ("version", "one.two"), ("serial", 4), ("serial", 0),
                                         ("model", None)])
def test_the_updater_refuses_odd_assignment_fields_instead_of_crashing(field, value):
    from edgewise.agent.ota.updater import _check_fields
    from edgewise.errors import AgentError

    good = {"device_id": "d", "expires": 1e12, "serial": 3, "models": [GOOD_ENTRY, {**GOOD_ENTRY, "model": "n"}]}
    _check_fields(good)
    with pytest.raises(AgentError):
        _check_fields({**good, "models": [{**GOOD_ENTRY, field: value}]})


@pytest.mark.parametrize("doc", [{"models": {"m": GOOD_ENTRY}}, {"models": [GOOD_ENTRY, GOOD_ENTRY]},
                                 {"models": ["m"]}, {"models": [GOOD_ENTRY] * 65}, {"serial": -1}])
def test_the_updater_refuses_an_odd_set_of_models(doc):
    from edgewise.agent.ota.updater import _check_fields
    from edgewise.errors import AgentError

    with pytest.raises(AgentError):
        _check_fields({"device_id": "d", "expires": 1e12, "serial": 3, "models": [GOOD_ENTRY]} | doc)
