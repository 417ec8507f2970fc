"""Rollouts: devices running the real updater code (async) against the fleet server's app in this process,
through httpx's ASGI transport, on a fake clock; rollouts advance when the test ticks them. One test keeps a
real server process (the wire, the ticker thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from edgewise.bundle import verify_bundle
from edgewise.bundle.signing import TrustStore, verify_signed_bundle

from ..harness import FleetProc, make_devices, run, wait_rollout


async def poll_all(devs, rounds: int = 40, until=None, fleet=None) -> None:  # type: ignore[no-untyped-def]
    """Every device polls once a round; then the fleet advances its rollouts (a real server does so on its
    own, every second: then the round also waits a little)."""
    for _ in range(rounds):
        await asyncio.gather(*(d.poll_once() for d in devs))
        if fleet is not None:
            fleet.tick()
        if until is not None and until():
            return
        if fleet is None or isinstance(fleet, FleetProc):
            await asyncio.sleep(0.05)


def on_verified_working_model(dev, kit) -> str:  # type: ignore[no-untyped-def]
    """The device's active slot verifies (hashes + release signature): its version."""
    manifest, _ = verify_signed_bundle(dev.slots.of("digits").active_dir, TrustStore.load([kit["pub"]]))
    assert manifest.version == dev.slots.of("digits").state.version
    return manifest.version


def upload_all(fleet, kit, *names) -> None:  # type: ignore[no-untyped-def]
    for n in names:
        fleet.admin.upload(kit["bundles"][n])


def test_waves_update_every_device_and_each_step_is_reported(fleet, fleet_kit, tmp_path):
    # Prepare
    upload_all(fleet, fleet_kit, "1.0.0", "1.1.0")

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await make_devices(fleet, fleet_kit, tmp_path, 5, "cams", c)
            # Execute: install 1.0.0 everywhere, then roll 1.1.0 out in three waves
            r1 = fleet.admin.rollout("digits", "1.0.0", "cams", [20, 60, 100])
            await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(r1["id"])["state"] == "completed")
            r2 = fleet.admin.rollout("digits", "1.1.0", "cams", [20, 60, 100])
            seen_waves = set()
            for _ in range(60):
                seen_waves.add(fleet.admin.get_rollout(r2["id"])["wave"])
                await asyncio.gather(*(d.poll_once() for d in devs))
                if fleet.admin.get_rollout(r2["id"])["state"] == "completed":
                    break
            return devs, r2, seen_waves

    devs, r2, seen_waves = run(go())
    # Assert
    assert wait_rollout(fleet, r2["id"], ("completed",))["devices"] == {"healthy": 5}
    assert seen_waves >= {0, 1, 2}
    assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 5
    assert {d["models"]["digits"] for d in fleet.admin.devices("cams")} == {"1.1.0"}
    steps = [s[0] for s in devs[0].log]
    assert steps[-5:] == ["download", "verify", "selftest", "switch", "health"]


async def on_base(fleet, kit, tmp_path, c, n=4, **kw):  # type: ignore[no-untyped-def]
    """n devices tagged 'cams', all running a verified 1.0.0."""
    if not any(m["version"] == "1.0.0" for m in fleet.admin.models()):
        fleet.admin.upload(kit["bundles"]["1.0.0"])
    devs = await make_devices(fleet, kit, tmp_path, n, "cams", c, **kw)
    r = fleet.admin.rollout("digits", "1.0.0", "cams", [100])
    await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(r["id"])["state"] == "completed")
    return devs


@pytest.mark.parametrize("bad, version, failing_step", [("noload", "1.2.0", "selftest"),
                                                        ("selftest", "1.3.0", "selftest"),
                                                        ("rogue", "1.4.0", "verify")])
def test_a_bad_bundle_fails_the_canary_and_the_rollout_halts(inproc_fleet, fleet_kit, tmp_path, bad, version, failing_step):
    fleet = inproc_fleet
    # Prepare: four devices on 1.0.0 and a bad bundle: its model does not load, or it fails its self-test,
    # or it is signed by a key the registry accepts but the devices were never given
    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c)
            fleet.admin.upload(fleet_kit["bundles"][bad])
            # Execute
            r = fleet.admin.rollout("digits", version, "cams", [25, 100])
            await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(r["id"])["state"] != "running")
            return devs, fleet.admin.get_rollout(r["id"])

    devs, r = run(go())
    # Assert: the one canary failed at the expected step, nobody else was asked, all still on a verified 1.0.0
    assert r["state"] in ("halted", "rolled_back") and "1 of 1 devices failed" in r["reason"], r
    failed = [d for d in devs if any(s == failing_step and not ok for s, ok, _ in d.log)]
    assert len(failed) == 1 and r["devices"] == {"failed": 1}
    assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.0.0"] * 4


def test_health_gate_failure_rolls_installed_devices_back(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet
    # Prepare: devices whose health check after the switch reports a 40% error rate (a model that loads
    # and passes its self-test but misbehaves on live data)
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])

    def sick_health(bundle: Path) -> dict:
        return {"error_rate": 0.4 if verify_bundle(bundle).version == "1.1.0" else 0.0, "latency_ms": 1.0}

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c, health=sick_health)
            # Execute
            r = fleet.admin.rollout("digits", "1.1.0", "cams", [50, 100], gate={"max_error_rate": 0.05})
            await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(r["id"])["state"] != "running")
            await poll_all(devs, fleet=fleet, rounds=10)  # devices pick up the signed rollback instruction
            return devs, fleet.admin.get_rollout(r["id"])

    devs, r = run(go())
    # Assert: the first wave (2 devices) installed 1.1.0, the gate saw the error rate, they went back
    assert r["state"] == "rolled_back" and "error rate" in r["reason"], r
    assert r["devices"].get("healthy") == 2 and r["devices"].get("rollback_healthy") == 2, r
    assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.0.0"] * 4
    # switches per device: 1.0.0 only, or 1.0.0 -> 1.1.0 -> back to 1.0.0 (the signed rollback)
    assert sorted(sum(s == "switch" for s, _, _ in d.log) for d in devs) == [1, 1, 3, 3]


def test_corrupted_and_truncated_downloads_are_refused(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet
    # Prepare: the stored archive is damaged on the server's disk after upload
    async def go(damage):  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path / damage, c, n=1)
            m = fleet.admin.upload(fleet_kit["bundles"]["1.1.0"]) if damage == "corrupt" else \
                next(x for x in fleet.admin.models() if x["version"] == "1.1.0")
            stored = fleet.data_dir / "models" / f"{m['sha256']}.tar"
            data = bytearray(stored.read_bytes())
            if damage == "corrupt":
                data[len(data) // 2] ^= 0xFF
            else:
                data = data[: len(data) // 2]
            stored.write_bytes(bytes(data))
            # Execute
            fleet.admin.rollout("digits", "1.1.0", "cams", [100])
            await poll_all(devs, fleet=fleet, rounds=3)
            return devs[0]

    for damage, words in (("corrupt", "sha256"), ("truncated", "bytes")):
        dev = run(go(damage))
        # Assert
        assert any(s in ("download", "gave_up") and not ok and words in d for s, ok, d in dev.log), dev.log
        assert on_verified_working_model(dev, fleet_kit) == "1.0.0"


def test_an_interrupted_download_resumes_where_it_stopped(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet
    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c, n=1)
            dev = devs[0]
            m = fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
            archive = (fleet.data_dir / "models" / f"{m['sha256']}.tar").read_bytes()
            (dev.slots.root / "download").mkdir(exist_ok=True)
            (dev.slots.root / "download" / f"{m['sha256']}.part").write_bytes(archive[: len(archive) * 2 // 3])
            dev.bytes_downloaded = 0
            fleet.admin.rollout("digits", "1.1.0", "cams", [100])
            await poll_all(devs, fleet=fleet, rounds=3)
            return dev, len(archive)

    dev, size = run(go())
    assert dev.slots.of("digits").state.version == "1.1.0"
    assert dev.bytes_downloaded == size - size * 2 // 3


def test_a_kept_partial_download_with_wrong_bytes_is_fetched_again_whole(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet
    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            dev = (await on_base(fleet, fleet_kit, tmp_path, c, n=1))[0]
            m = fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
            (dev.slots.root / "download" / f"{m['sha256']}.part").write_bytes(b"\0" * 4096)  # zeros after a crash
            dev.bytes_downloaded = 0
            fleet.admin.rollout("digits", "1.1.0", "cams", [100])
            await poll_all([dev], fleet=fleet, rounds=2)
            return dev, m["size"]

    dev, size = run(go())
    assert dev.slots.of("digits").state.version == "1.1.0"
    assert dev.bytes_downloaded == (size - 4096) + size


def test_a_device_silent_past_the_wave_timeout_halts_the_rollout_without_waiting_for_it(inproc_fleet, fleet_kit,
                                                                                         tmp_path):
    """On the fake clock: ten minutes pass in a line, so the wave timeout is tested as it is configured."""
    fleet = inproc_fleet
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c)
            r = fleet.admin.rollout("digits", "1.1.0", "cams", [50, 100], gate={"wave_timeout_s": 600})
            fleet.tick()  # the first wave (two devices) is assigned
            assigned = {row[0] for row in fleet.store.db.query(
                "SELECT device_id FROM assignments WHERE rollout_id=? AND rollback=0", (r["id"],))}
            wave = [d for d in devs if d.ident.device_id in assigned]
            assert len(wave) == 2
            await poll_all(wave[:1], fleet=fleet, rounds=3)  # one installs; the other stays off the air
            fleet.clock.advance(599)
            fleet.tick()
            before = fleet.admin.get_rollout(r["id"])
            fleet.clock.advance(2)
            fleet.tick()
            return before, fleet.admin.get_rollout(r["id"])

    before, after = run(go())
    assert before["state"] == "running" and before["wave"] == 0, before  # still within the timeout
    assert after["state"] in ("halted", "rolled_back"), after
    assert "1 of 2 devices failed (1 silent past the 600 s wave timeout)" in after["reason"], after


def test_two_models_from_two_independent_rollouts_and_a_failure_of_one_never_touches_the_other(
        inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet
    for b in ("1.1.0", "noload", "lite-2.0.0", "lite-2.1.0"):
        fleet.admin.upload(fleet_kit["bundles"][b])

    def lite(dev):  # type: ignore[no-untyped-def]
        st = dev.slots.of("digits-lite").state
        return st.active, st.version, st.installed_serial

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c)  # digits 1.0.0 on four devices
            # Execute: two rollouts at once, each in its own waves
            r1 = fleet.admin.rollout("digits", "1.1.0", "cams", [25, 100])
            r2 = fleet.admin.rollout("digits-lite", "2.0.0", "cams", [50, 100])
            await poll_all(devs, fleet=fleet, until=lambda: all(
                fleet.admin.get_rollout(r["id"])["state"] == "completed" for r in (r1, r2)))
            installed = [lite(d) for d in devs]
            # a bad digits (its model does not load) halts on its canary; then digits-lite 2.1.0, rolled back
            bad = fleet.admin.rollout("digits", "1.2.0", "cams", [25, 100])
            await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(bad["id"])["state"] != "running")
            after_bad = [lite(d) for d in devs]
            r3 = fleet.admin.rollout("digits-lite", "2.1.0", "cams", [100])
            await poll_all(devs, fleet=fleet, until=lambda: fleet.admin.get_rollout(r3["id"])["state"] == "completed")
            fleet.admin.control(r3["id"], "rollback")
            await poll_all(devs, fleet=fleet, rounds=3)
            return devs, installed, after_bad, fleet.admin.get_rollout(bad["id"]), fleet.admin.get_rollout(r3["id"])

    devs, installed, after_bad, bad, r3 = run(go())
    # Assert: every device runs both models, each verified in its own slots
    trust = TrustStore.load([fleet_kit["pub"]])
    for d in devs:
        got = {m: verify_signed_bundle(d.slots.of(m).active_dir, trust)[0].version for m in d.slots.models()}
        assert got == {"digits": "1.1.0", "digits-lite": "2.0.0"}
    assert {d.slots.of("digits").root != d.slots.of("digits-lite").root for d in devs} == {True}
    # the bad digits failed on its canary alone; digits-lite stayed exactly as it was (slot, version, serial)
    assert bad["state"] in ("halted", "rolled_back") and bad["devices"] == {"failed": 1}, bad
    assert after_bad == installed and {v for _, v, _ in installed} == {"2.0.0"}
    # the digits-lite rollback went back to 2.0.0 and did not move digits
    assert r3["state"] == "rolled_back" and r3["devices"].get("rollback_healthy") == 4, r3
    assert [m["models"] for m in fleet.admin.devices("cams")] == [{"digits": "1.1.0", "digits-lite": "2.0.0"}] * 4


class _Flaky(httpx.AsyncBaseTransport):
    """The fleet's app, with bundle downloads cut by the network `fail` times first."""

    def __init__(self, app, fail: int) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.fail = httpx.ASGITransport(app=app), fail

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/bundles/" in request.url.path and self.fail > 0:
            self.fail -= 1
            raise httpx.ReadError("the link dropped")
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("cuts, want", [(6, ["deferred", "installed"]), (100, ["deferred", "deferred", "failed"])])
def test_a_download_the_network_cuts_short_is_resumed_at_the_next_poll_then_given_up(inproc_fleet, fleet_kit,
                                                                                    tmp_path, cuts, want):
    fleet = inproc_fleet
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])

    async def go():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=_Flaky(fleet.app, 0), base_url=fleet.url) as c:
            dev = (await on_base(fleet, fleet_kit, tmp_path, c, n=1, download_polls=3))[0]
            c._transport.fail = cuts  # four tries a poll (make_devices' updater)
            r = fleet.admin.rollout("digits", "1.1.0", "cams", [100])
            outcomes = []
            for _ in want:
                outcomes.append(await dev.poll_once())
                fleet.tick()
            return dev, outcomes, fleet.admin.get_rollout(r["id"])

    dev, outcomes, r = run(go())
    steps = [row["step"] for row in fleet.store.timeline(dev.ident.device_id)]  # newest first
    assert outcomes == want
    if want[-1] == "installed":  # a flaky link delays the install; it does not fail the rollout
        assert r["state"] == "completed" and r["devices"] == {"healthy": 1}, r
        assert on_verified_working_model(dev, fleet_kit) == "1.1.0" and steps.count("retrying") == 1
    else:  # after three polls the device says it gave up, and the rollout counts it as failed
        assert r["state"] in ("halted", "rolled_back") and r["devices"] == {"failed": 1}, r
        assert steps.count("gave_up") == 1 and steps.count("retrying") == 2
        assert on_verified_working_model(dev, fleet_kit) == "1.0.0"
