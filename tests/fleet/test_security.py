"""Authentication, isolation between devices, and metadata that must not be replayed or trusted when stale."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import httpx
import pytest

from edgewise.bundle.signing import canonical
from edgewise.errors import SignatureError

from ..harness import ADMIN, FleetInProc, make_devices, run
from .test_rollouts import on_base, on_verified_working_model, poll_all


def status(url: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None,
           fleet=None) -> int:  # type: ignore[no-untyped-def]
    """The status code of one request: over the wire, or to an in-process fleet (harness.FleetInProc)."""
    if isinstance(fleet, FleetInProc):
        return fleet.http.request(method, url, headers=headers or {}, content=body).status_code
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_unauthenticated_and_cross_device_requests_are_refused(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet

    def status(*a, **kw):  # type: ignore[no-untyped-def]
        return globals()["status"](*a, **kw, fleet=fleet)

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c, n=1)
            other = (await make_devices(fleet, fleet_kit, tmp_path / "o", 1, "other", c))[0]
            return devs[0], other

    dev, other = run(go())
    sha = next(m["sha256"] for m in fleet.admin.models())
    u = fleet.url
    # No credentials, wrong credentials, a device credential on the admin API, the admin token as a device
    assert status(f"{u}/v1/device/assignment") == 401
    assert status(f"{u}/v1/device/assignment", {"Authorization": f"Bearer {dev.ident.device_id}.wrong"}) == 401
    assert status(f"{u}/v1/admin/devices", dev.ident.auth) == 401
    assert status(f"{u}/v1/admin/devices", {"Authorization": "Bearer nope"}) == 401
    assert status(f"{u}/v1/device/assignment", {"Authorization": f"Bearer {ADMIN}"}) == 401
    # A device can fetch only bundles assigned to it; reports need its own credential
    assert status(f"{u}/v1/device/bundles/{sha}", dev.ident.auth) == 200
    assert status(f"{u}/v1/device/bundles/{sha}", other.ident.auth) == 404
    assert status(f"{u}/v1/device/report", method="POST", body=b"{}") == 401
    # An enrolment token works once
    token = fleet.admin.enroll_token(["x"])
    body = json.dumps({"token": token, "name": "a"}).encode()
    hdr = {"Content-Type": "application/json"}
    assert status(f"{u}/v1/device/enroll", hdr, "POST", body) == 200
    assert status(f"{u}/v1/device/enroll", hdr, "POST", body) == 403
    # Oversized and malformed bodies
    assert status(f"{u}/v1/device/report", {**dev.ident.auth, "Content-Type": "application/json"}, "POST",
                  b"x" * (100 << 10)) == 413
    assert status(f"{u}/v1/device/report", {**dev.ident.auth, "Content-Type": "application/json"}, "POST",
                  b"[not json") == 400


def test_rate_limit_answers_429(fleet, fleet_kit, tmp_path):
    # each worker process keeps its own buckets: N workers let N times the burst through
    codes = [status(f"{fleet.url}/v1/device/assignment", {"Authorization": "Bearer a.b"})
             for _ in range(120 * fleet.workers)]
    assert 429 in codes and codes[0] == 401


def test_tampered_replayed_expired_and_downgrade_metadata_is_refused(inproc_fleet, fleet_kit, tmp_path):
    fleet = inproc_fleet

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c, n=1)
            dev = devs[0]
            r = await c.get(f"{fleet.url}/v1/device/assignment", headers=dev.ident.auth)
            doc = r.json()
            # Tampered: another version under the old signature
            forged = dict(doc["assignment"], version="9.9.9")
            with pytest.raises(SignatureError):
                dev.fleet_keys.verify(canonical(forged), doc["signature"])
            # Replayed: a newer assignment was seen, then the old (validly signed) one comes back
            fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
            fleet.admin.rollout("digits", "1.1.0", "cams", [100])
            await poll_all(devs, fleet=fleet, rounds=2)
            assert dev.slots.of("digits").state.version == "1.1.0"
            old = doc

            class Replay(httpx.AsyncBaseTransport):
                async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
                    return httpx.Response(200, json=old)

            dev.client = httpx.AsyncClient(transport=Replay())
            assert await dev.poll_once() == "refused" and "replayed" in dev.log[-1][2]
            dev.client = c
            # Downgrade: an ordinary (not rollback) assignment of 1.0.0 to a device on 1.1.0
            fleet.admin.rollout("digits", "1.0.0", "cams", [100])
            fleet.tick()
            outcome = await dev.poll_once()
            return dev, outcome

    dev, outcome = run(go())
    assert outcome == "failed" and "refused downgrade" in dev.log[-1][2]
    assert on_verified_working_model(dev, fleet_kit) == "1.1.0"


def test_expired_assignment_metadata_is_refused(inproc_fleet, fleet_kit, tmp_path):
    """Signed an hour and a second ago with a one-hour life (the fleet's clock is set back; the device's is not)."""
    fleet = inproc_fleet
    fleet.clock.now = time.time() - 3601

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            dev = (await make_devices(fleet, fleet_kit, tmp_path, 1, "cams", c))[0]
            fleet.admin.upload(fleet_kit["bundles"]["1.0.0"])
            fleet.admin.rollout("digits", "1.0.0", "cams", [100])
            fleet.tick()
            stale = await dev.poll_once()
            fleet.clock.now = time.time() - 3500  # now signed 58 minutes ago: still valid
            return dev, stale, await dev.poll_once()

    dev, stale, fresh = run(go())
    assert stale == "refused" and any("expired" in d for s, ok, d in dev.log if not ok), dev.log
    assert fresh != "refused" and dev.slots.of("digits").state.version == "1.0.0", dev.log
