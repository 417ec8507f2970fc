"""Debian's nginx in front of `fleet serve --workers 2` on PostgreSQL (issue 17), as the README lays out for a
fleet that outgrows one process: nginx proxies the API to the workers and serves the bundle archives itself
(sendfile, Range, ETag) from the fleet's data directory; the workers never send a bundle."""

from __future__ import annotations

import os

import httpx
import pytest

from ..harness import FleetProc, Nginx, make_devices, run
from .test_rollouts import on_verified_working_model, poll_all


@pytest.fixture
def behind_nginx(fleet_kit, tmp_path, pg_db):  # type: ignore[no-untyped-def]
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], db=pg_db, workers=2)
    try:
        nginx = Nginx(fleet.port, fleet.data_dir / "models")
    except FileNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing in CI (.ci/run installs nginx-light)")
        pytest.skip("nginx not installed (apt-get install nginx-light)")
    fleet.bundle_url = f"{nginx.url}/bundles"  # the URL the signed assignments give the devices
    fleet.start()
    direct = fleet.url
    try:
        nginx.start()
        fleet.url = nginx.url  # the admin and the devices know only nginx
        yield fleet, nginx, direct
    finally:
        nginx.stop()
        fleet.url = direct
        fleet.kill()


@pytest.mark.e2e
def test_a_rollout_through_nginx_with_bundles_sent_by_nginx_not_the_workers(behind_nginx, fleet_kit, tmp_path):
    fleet, nginx, direct = behind_nginx

    async def go():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as c:
            devs = await make_devices(fleet, fleet_kit, tmp_path, 4, "cams", c)
            for version in ("1.0.0", "1.1.0"):
                m = fleet.admin.upload(fleet_kit["bundles"][version])  # through nginx too (a 64 MB body cap)
                r = fleet.admin.rollout("digits", version, "cams", [50, 100])
                await poll_all(devs, until=lambda r=r: fleet.admin.get_rollout(r["id"])["state"] != "running")
            return devs, m, fleet.admin.get_rollout(r["id"])

    devs, m, r = run(go())
    url = f"{nginx.url}/bundles/{m['sha256']}.tar"
    whole = httpx.get(url)
    again = httpx.get(url, headers={"If-None-Match": whole.headers["etag"]})
    tail = httpx.get(url, headers={"Range": "bytes=100-"})
    fleet.url = direct  # each worker's own counters, asked directly
    workers = fleet.health_by_worker()
    # Assert: the rollout completed through nginx; every archive went out from nginx, none from a worker
    assert r["state"] == "completed" and r["devices"] == {"healthy": 4}, r
    assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 4
    sent = [(method, status) for method, path, status, _ in nginx.access_log() if path.startswith("/bundles/")]
    assert sorted(sent) == [("GET", "200")] * (8 + 1) + [("GET", "206"), ("GET", "304")], sent  # 8: the devices
    assert len(workers) == 2 and sum((h["latency"].get("download") or {}).get("n", 0) for h in workers.values()) == 0
    # and nginx answers as a file server must: ETag revalidation, Range for resumes
    assert whole.status_code == 200 and whole.content == (fleet.data_dir / "models" / f"{m['sha256']}.tar").read_bytes()
    assert again.status_code == 304 and tail.status_code == 206 and tail.content == whole.content[100:]
