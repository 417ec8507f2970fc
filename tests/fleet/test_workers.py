"""Several fleet server processes on one PostgreSQL database (issue 17): all state lives in the database, a
rollout's wave is judged and advanced in one place only, and a worker killed mid-rollout loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from edgewise.bundle.archive import pack
from edgewise.bundle.signing import TrustStore, generate_keys, load_private
from edgewise.errors import FleetError
from edgewise.fleet.db import Database
from edgewise.fleet.store import FleetStore

from ..harness import FleetProc, make_devices, run, wait_for
from .test_rollouts import on_verified_working_model


def _store(url: str, tmp_path, kit) -> FleetStore:  # type: ignore[no-untyped-def]
    if not (tmp_path / "fleet.key").exists():
        generate_keys(tmp_path, "fleet")
    return FleetStore(Database(url), tmp_path, load_private(tmp_path / "fleet.key"), TrustStore.load([kit["pub"]]))


def test_two_workers_ticking_one_rollout_never_advance_a_wave_twice(pg_db, fleet_kit, tmp_path):
    """Two stores on one database are two server processes: both tick the rollout as fast as they can while
    the devices of each wave report healthy; every device gets the new version exactly once."""
    a, b = _store(pg_db, tmp_path, fleet_kit), _store(pg_db, tmp_path, fleet_kit)
    a.add_model(pack(fleet_kit["bundles"]["1.1.0"]), "ci")
    ids = [a.enroll(a.enroll_token(["cams"]), f"d{i}")["device_id"] for i in range(24)]
    rid = a.create_rollout("digits", "1.1.0", "cams", [10, 25, 50, 75, 100], None, True, "ci")["id"]
    errors: list[BaseException] = []
    done = threading.Event()

    def ticker(store: FleetStore) -> None:
        while not done.is_set():
            try:
                store.tick(rid)
            except BaseException as e:  # noqa: BLE001 - collected and asserted on below
                errors.append(e)

    def devices() -> None:  # the wave's devices settle: healthy, through either worker
        deadline = time.monotonic() + 60
        try:
            for i in range(2000):
                store = (a, b)[i % 2]
                for (device_id, serial) in store.db.query(
                        "SELECT device_id, serial FROM assignments WHERE rollout_id=? AND status='pending'", (rid,)):
                    store.report(device_id, {"step": "health", "ok": True, "serial": serial})
                if store.rollout(rid)["state"] != "running" or time.monotonic() > deadline:
                    break
        except BaseException as e:  # noqa: BLE001 - a report's tick failed: asserted on below
            errors.append(e)
        finally:
            done.set()

    threads = [threading.Thread(target=ticker, args=(s,)) for s in (a, b, a, b)] + [threading.Thread(target=devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    rows = a.db.query("SELECT device_id FROM assignments WHERE rollout_id=?", (rid,))
    assert not errors, errors[:3]
    assert a.rollout(rid)["state"] == "completed" and a.rollout(rid)["devices"] == {"healthy": 24}
    assert sorted(r[0] for r in rows) == sorted(ids)  # each device exactly once
    a.db.close()
    b.db.close()


def test_two_rollouts_of_two_models_started_at_once_in_two_workers_give_each_device_distinct_serials(
        pg_db, fleet_kit, tmp_path):
    """A device's next serial is its MAX + 1: two workers assigning the same devices for two models at the
    same moment must not both take it (without the device lock: a duplicate-key error, a wave not started)."""
    a, b = _store(pg_db, tmp_path, fleet_kit), _store(pg_db, tmp_path, fleet_kit)
    for bundle in ("1.1.0", "lite-2.0.0"):
        a.add_model(pack(fleet_kit["bundles"][bundle]), "ci")
    ids = [a.enroll(a.enroll_token(["cams"]), f"d{i}")["device_id"] for i in range(60)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def start(store: FleetStore, model: str, version: str) -> None:
        barrier.wait()
        try:
            store.create_rollout(model, version, "cams", [100], None, True, "ci")
        except BaseException as e:  # noqa: BLE001 - asserted on below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(a, "digits", "1.1.0")),
               threading.Thread(target=start, args=(b, "digits-lite", "2.0.0"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:2]
    rows = a.db.query("SELECT device_id, serial, model FROM assignments")
    assert len(rows) == 2 * len(ids) and {(d, m) for d, _, m in rows} == {(d, m) for d in ids
                                                                           for m in ("digits", "digits-lite")}
    assert all({m["model"] for m in a.assignment(d)["assignment"]["models"]} == {"digits", "digits-lite"}
               for d in ids[:5])
    a.db.close()
    b.db.close()


def test_one_enrolment_token_enrols_one_device_however_many_workers_race_for_it(pg_db, fleet_kit, tmp_path):
    stores = [_store(pg_db, tmp_path, fleet_kit) for _ in range(4)]
    token = stores[0].enroll_token(["x"])
    won, lost = [], []
    barrier = threading.Barrier(len(stores))

    def go(s: FleetStore) -> None:
        barrier.wait()
        try:
            won.append(s.enroll(token, "race")["device_id"])
        except FleetError:
            lost.append(1)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3
    assert len(stores[0].devices()) == 1
    for s in stores:
        s.db.close()


def test_workers_need_a_shared_database(tmp_path):
    from edgewise.fleet.server import ServerConfig, serve

    with pytest.raises(FleetError, match="--workers > 1 needs a database the workers share"):
        serve(ServerConfig(data_dir=tmp_path), workers=2)


@pytest.mark.e2e
def test_a_rollout_completes_while_one_of_two_workers_is_killed(pg_db, fleet_kit, tmp_path):
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], db=pg_db, workers=2).start()
    try:
        first = fleet.worker_pids()
        assert len(first) == 2
        fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])

        async def go():  # type: ignore[no-untyped-def]
            async with fleet.client() as c:
                devs = await make_devices(fleet, fleet_kit, tmp_path, 6, "cams", c)
                r = fleet.admin.rollout("digits", "1.1.0", "cams", [34, 67, 100])
                killed = False
                for _ in range(200):
                    await asyncio.gather(*(d.poll_once() for d in devs))
                    state = fleet.admin.get_rollout(r["id"])
                    if not killed and state["wave"] >= 1:
                        os.kill(first[0], signal.SIGKILL)  # mid-rollout, without warning
                        killed = True
                    if state["state"] != "running":
                        break
                    await asyncio.sleep(0.1)
                return devs, fleet.admin.get_rollout(r["id"]), killed

        devs, r, killed = run(go())
        assert killed and r["state"] == "completed" and r["devices"] == {"healthy": 6}, r
        assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 6
        db = Database(pg_db)
        rows = db.query("SELECT device_id FROM assignments WHERE rollout_id=?", (r["id"],))
        db.close()
        assert len(rows) == len({x[0] for x in rows}) == 6  # no wave assigned twice
        wait_for(lambda: len(fleet.worker_pids()) == 2 and first[0] not in fleet.worker_pids(), timeout=10)
    finally:
        fleet.kill()
