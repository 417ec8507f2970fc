"""The fleet store's rules on both databases: SQLite (default) and a real PostgreSQL started here."""

from __future__ import annotations

import pytest

from edgewise.bundle.archive import pack
from edgewise.bundle.signing import TrustStore, generate_keys, load_private
from edgewise.errors import FleetError
from edgewise.fleet.db import Database
from edgewise.fleet.store import FleetStore



@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, fleet_kit):
    if request.param == "sqlite":
        url = str(tmp_path / "fleet.db")
    else:
        url = request.getfixturevalue("postgres_url")
        db = Database(url)
        for table in ("models", "enroll_tokens", "devices", "rollouts", "assignments", "reports", "device_models"):
            db.execute(f"DELETE FROM {table}")
        db.close()
    generate_keys(tmp_path, "fleet")
    s = FleetStore(Database(url), tmp_path, load_private(tmp_path / "fleet.key"),
                   TrustStore.load([fleet_kit["pub"]]))
    yield s
    s.db.close()


def _slot(store, device_id: str, model: str = "digits") -> dict:  # type: ignore[no-untyped-def]
    """The device's signed assignment for `model` ({} when none)."""
    return next((m for m in store.assignment(device_id)["assignment"]["models"] if m["model"] == model), {})


def test_registry_enrolment_and_a_gated_rollout_behave_the_same_on_both_databases(store, fleet_kit):
    # Prepare: three enrolled devices running 1.0.0
    b = fleet_kit["bundles"]
    for v in ("1.0.0", "1.1.0"):
        store.add_model(pack(b[v]), "ci")
    store.add_model(pack(b["rogue"]), "ci")  # signed by a key this registry does not trust
    ids = [store.enroll(store.enroll_token(["cams"]), f"d{i}")["device_id"] for i in range(3)]
    for d in ids:
        store.report(d, {"step": "health", "ok": True, "model": "digits", "active_version": "1.0.0"})
    # Execute: a rollout in waves where the canary reports success, then a device of wave 2 fails
    r = store.create_rollout("digits", "1.1.0", "cams", [34, 100], {"max_failure_rate": 0.0}, True, "ci")
    canary = [d for d in ids if _slot(store, d).get("version") == "1.1.0"]
    serial = _slot(store, canary[0])["serial"]
    store.report(canary[0], {"step": "health", "ok": True, "serial": serial, "model": "digits",
                             "active_version": "1.1.0", "error_rate": 0.0})
    after_canary = store.rollout(r["id"])
    rest = [d for d in ids if d not in canary]
    store.report(rest[0], {"step": "selftest", "ok": False, "serial": _slot(store, rest[0])["serial"]})
    store.report(rest[1], {"step": "health", "ok": True, "serial": _slot(store, rest[1])["serial"],
                           "active_version": "1.1.0", "model": "digits"})
    final = store.rollout(r["id"])
    # Assert
    models = {m["version"]: m for m in store.models()}
    assert models["1.1.0"]["signature"] == "valid" and models["1.4.0"]["signature"].startswith("invalid")
    with pytest.raises(FleetError, match="not validly signed"):
        store.create_rollout("digits", "1.4.0", "cams", [100], None, True, "ci")
    with pytest.raises(FleetError, match="already used"):
        store.enroll("not-a-token", "x")
    assert len(canary) == 1 and after_canary["wave"] == 1 and after_canary["state"] == "running"
    assert final["state"] == "rolled_back" and "1 of 3 devices failed" in final["reason"]
    # the devices that took 1.1.0 are told to go back to 1.0.0 with a signed rollback instruction
    back = [_slot(store, d) for d in (canary[0], rest[1])]
    assert [(a["version"], a["rollback"]) for a in back] == [("1.0.0", True)] * 2
    assert _slot(store, rest[0])["version"] == "1.1.0"  # never installed; nothing to undo
    assert store.db.kind in ("sqlite", "postgresql")


def test_a_store_from_before_several_models_keeps_what_each_device_runs(tmp_path):
    """devices.model/version (one model per device) are copied into device_models when that table is new."""
    db = Database(str(tmp_path / "fleet.db"))
    db.execute("DROP TABLE device_models")
    db.execute("INSERT INTO devices VALUES ('d1','cam','h','[]',0,0,'digits','1.0.0','health')")
    db.execute("INSERT INTO devices VALUES ('d2','cam','h','[]',0,0,NULL,NULL,'enrolled')")
    db.close()
    again = Database(str(tmp_path / "fleet.db"))
    assert again.query("SELECT device_id, model, version FROM device_models") == [("d1", "digits", "1.0.0")]
    again.close()
