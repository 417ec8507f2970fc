"""Power loss (kill -9) at every step of an install, and a fleet server restarted mid-rollout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest

from edgewise.agent.ota.slots import SlotSet

from ..harness import FleetProc, run, wait_rollout
from .test_rollouts import on_base, on_verified_working_model, poll_all

HERE = Path(__file__).parent


def device(ident: Path, slots: Path, kit: dict, fleet_pub: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "device_proc.py"), str(ident), str(slots), str(kit["pub"]),
                           str(fleet_pub), kill_at], capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
@pytest.mark.parametrize("kill_at", ["midstream", "download", "verify", "selftest", "switch", "health"])
def test_kill_9_at_each_step_comes_back_on_a_working_model(fleet, fleet_kit, tmp_path, kill_at):
    # Prepare: a device process on 1.0.0, then a rollout of 1.1.0
    async def go():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as c:
            return (await on_base(fleet, fleet_kit, tmp_path, c, n=1))[0]

    dev = run(go())
    dev.ident.save(tmp_path / "ident.json")
    (tmp_path / "fleet.pub").write_bytes(urllib.request.urlopen(fleet.url + "/v1/keys/fleet.pub").read())
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
    r = fleet.admin.rollout("digits", "1.1.0", "cams", [100])
    # Execute: the device dies at the step, then boots again and carries on
    died = device(tmp_path / "ident.json", dev.slots.root, fleet_kit, tmp_path / "fleet.pub", kill_at)
    after_crash = SlotSet(dev.slots.root).of("digits").state
    booted = device(tmp_path / "ident.json", dev.slots.root, fleet_kit, tmp_path / "fleet.pub")
    # Assert: it really died (SIGKILL), was on a verified model right after, and ends on 1.1.0
    assert died.returncode == -9, died.stderr[-2000:]
    assert after_crash.version in ("1.0.0", "1.1.0")
    dev.slots = SlotSet(dev.slots.root)
    assert booted.returncode == 0, booted.stderr[-2000:]
    assert on_verified_working_model(dev, fleet_kit) == "1.1.0"
    assert wait_rollout(fleet, r["id"], ("completed",), timeout=10)["devices"] == {"healthy": 1}


@pytest.mark.e2e
def test_fleet_server_restarted_mid_rollout_finishes_the_rollout(fleet_kit, tmp_path):
    # Prepare
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]]).start()
    try:
        async def go():  # type: ignore[no-untyped-def]
            async with httpx.AsyncClient() as c:
                devs = await on_base(fleet, fleet_kit, tmp_path, c, n=4)
                fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
                r = fleet.admin.rollout("digits", "1.1.0", "cams", [25, 50, 100])
                await asyncio.gather(*(d.poll_once() for d in devs))  # the canary installs
                # Execute: the server dies (kill -9) and comes back on the same port and data
                fleet.kill()
                outcomes = await asyncio.gather(*(d.poll_once() for d in devs))
                fleet.start()
                await poll_all(devs, until=lambda: fleet.admin.get_rollout(r["id"])["state"] == "completed")
                return devs, r, outcomes

        devs, r, outcomes = run(go())
        # Assert: while it was down devices refused nothing and broke nothing; afterwards all on 1.1.0
        assert set(outcomes) == {"refused"}
        assert wait_rollout(fleet, r["id"], ("completed",))["devices"] == {"healthy": 4}
        assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 4
    finally:
        fleet.kill()


@pytest.mark.parametrize("cut_after", [None, "a"])
def test_a_device_from_before_several_models_keeps_its_model_when_its_slots_move(fleet_kit, tmp_path, cut_after):
    """The old layout (state.json, a/, b/ at the root) moves into the model's own directory; a power cut
    after moving `a` (the pointer still at the root) repeats the move at the next start."""
    import json
    import shutil

    from edgewise.bundle import verify_bundle

    root = tmp_path / "slots"
    shutil.copytree(fleet_kit["bundles"]["1.0.0"], root / "b")
    shutil.copytree(fleet_kit["bundles"]["1.1.0"], root / "a")
    (root / "state.json").write_text(json.dumps({"active": "a", "model": "digits", "version": "1.1.0",
                                                 "previous": {"slot": "b", "version": "1.0.0"},
                                                 "last_serial": 7, "installed_serial": 7, "extra": {}}))
    if cut_after == "a":  # the move was cut short: `a` is in its new place, the rest is not
        (root / "models" / "digits").mkdir(parents=True)
        (root / "a").rename(root / "models" / "digits" / "a")
    # Execute
    slots = SlotSet(root)
    # Assert
    assert slots.last_serial == 7 and slots.models() == ["digits"] and not (root / "state.json").exists()
    st = slots.of("digits").state
    assert (st.active, st.version, st.installed_serial, st.previous) == ("a", "1.1.0", 7, {"slot": "b", "version": "1.0.0"})
    assert verify_bundle(slots.of("digits").active_dir).version == "1.1.0"
    assert slots.recover() == {"digits": "ok"}
    assert SlotSet(root).versions() == {"digits": "1.1.0"}  # and again: nothing left to move
