"""The simulator: many devices as asyncio tasks running the real updater against a real server."""

from __future__ import annotations

import asyncio

import pytest

from edgewise.bundle.signing import TrustStore, verify_signed_bundle
from edgewise.sim.fleet import enroll_fleet, run_until

from ..harness import ADMIN


@pytest.mark.e2e  # several seconds: in `make test`, out of `make test-fast`
def test_forty_simulated_devices_complete_a_four_wave_rollout(fleet, fleet_kit, tmp_path):
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])

    async def go():  # type: ignore[no-untyped-def]
        sim = await enroll_fleet(fleet.url, ADMIN, 40, "sim", tmp_path / "devices", [fleet_kit["pub"]])
        r = fleet.admin.rollout("digits", "1.1.0", "sim", [1, 10, 50, 100])
        took = await run_until(sim, lambda: fleet.admin.get_rollout(r["id"])["state"] != "running", poll_s=0.3,
                               timeout_s=120)
        await sim.close()
        return sim, r, took

    sim, r, took = asyncio.run(go())
    final = fleet.admin.get_rollout(r["id"])
    assert final["state"] == "completed" and final["devices"] == {"healthy": 40}, final
    assert sim.versions() == {"digits 1.1.0": 40}
    trust = TrustStore.load([fleet_kit["pub"]])
    assert all(verify_signed_bundle(d.slots.of("digits").active_dir, trust)[0].version == "1.1.0" for d in sim.devices)
    assert len({d.ident.device_id for d in sim.devices}) == 40 and took < 120


@pytest.mark.e2e
def test_devices_split_over_simulator_processes_complete_a_rollout_together(fleet, fleet_kit, tmp_path):
    from edgewise.sim.fleet import run_sharded

    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
    rid: list[str] = []

    def start() -> str:
        rid.append(fleet.admin.rollout("digits", "1.1.0", "sim", [10, 100])["id"])
        return rid[0]

    res = run_sharded(fleet.url, ADMIN, 12, 3, "sim", tmp_path / "devices", [fleet_kit["pub"]], start,
                      poll_s=0.3, timeout_s=120)
    final = fleet.admin.get_rollout(rid[0])
    assert final["state"] == "completed" and final["devices"] == {"healthy": 12}, final
    assert res["versions"] == {"digits 1.1.0": 12} and res["took"] < 120
    assert len(res["api_ms"]) >= 24 and len(res["download_ms"]) == 12  # what the devices saw, from all shards
