"""Bundles off the Python path (issue 17): the signed assignment points devices at a static file server (this
server's own static route, or any other over HTTP); downloads resume with Range, revalidate with ETag, and
the device's credential never goes there, since what it downloads is verified on the device."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import threading

import httpx
import pytest

from ..harness import FleetInProc, FleetProc, make_devices, run
from .test_rollouts import on_verified_working_model, poll_all


def _rollout_with_header_log(fleet, fleet_kit, tmp_path):  # type: ignore[no-untyped-def]
    """Four devices take 1.0.0 then 1.1.0; returns them, the 1.1.0 archive's sha256 and the path of every
    request they made for a bundle."""
    sent: list[str] = []

    async def record(req: httpx.Request) -> None:
        if req.url.path.endswith(".tar") or "/bundles/" in req.url.path:
            sent.append(req.url.path)

    async def go():  # type: ignore[no-untyped-def]
        async with fleet.client() as c:
            c.event_hooks["request"] = [record]
            devs = await make_devices(fleet, fleet_kit, tmp_path, 4, "cams", c)
            for version in ("1.0.0", "1.1.0"):
                m = fleet.admin.upload(fleet_kit["bundles"][version])
                r = fleet.admin.rollout("digits", version, "cams", [50, 100])
                await poll_all(devs, fleet=fleet, until=lambda r=r: fleet.admin.get_rollout(r["id"])["state"] != "running")
                assert fleet.admin.get_rollout(r["id"])["state"] == "completed"
            return devs, m["sha256"]

    devs, sha = run(go())
    return devs, sha, sent


def test_bundles_served_as_static_files_here_resume_and_revalidate(fleet_kit, tmp_path):
    fleet = FleetInProc(tmp_path / "fleet", [fleet_kit["pub"]], bundle_url="/bundles")
    try:
        devs, sha, sent = _rollout_with_header_log(fleet, fleet_kit, tmp_path)
        assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 4
        assert len(sent) == 8 and all(p.startswith("/bundles/") and p.endswith(".tar") for p in sent), sent
        url = f"{fleet.url}/bundles/{sha}.tar"
        whole = fleet.http.get(url)  # no credential: the static route needs none
        assert whole.status_code == 200 and whole.headers["etag"] and whole.headers["accept-ranges"] == "bytes"
        again = fleet.http.get(url, headers={"If-None-Match": whole.headers["etag"]})
        assert again.status_code == 304 and not again.content
        tail = fleet.http.get(url, headers={"Range": "bytes=100-"})
        assert tail.status_code == 206 and tail.content == whole.content[100:]
        assert fleet.http.get(f"{fleet.url}/bundles/{'0' * 64}.tar").status_code == 404
    finally:
        fleet.kill()


def test_a_static_path_that_would_hide_the_servers_routes_is_refused(tmp_path):
    from edgewise.errors import FleetError
    from edgewise.fleet.server import ServerConfig, create_app

    for bad in ("/", "/v1/device", "/health"):
        with pytest.raises(FleetError, match="would hide the server's own routes"):
            create_app(ServerConfig(data_dir=tmp_path / bad.strip("/").replace("/", "-"), bundle_url=bad,
                                    admin_token="t"))


class _Recording(http.server.SimpleHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        super().do_GET()

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.mark.e2e
def test_devices_fetch_from_another_file_server_and_never_send_it_their_credential(fleet_kit, tmp_path):
    files = tmp_path / "cdn"
    files.mkdir()
    handler = type("Handler", (_Recording,), {"seen": []})
    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          lambda *a: handler(*a, directory=str(files)))  # type: ignore[misc]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{cdn.server_address[1]}/edge"
    (files / "edge").mkdir()
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], bundle_url=base).start()
    try:
        m = fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
        shutil.copy(fleet.data_dir / "models" / f"{m['sha256']}.tar", files / "edge")  # the operator's sync

        async def go():  # type: ignore[no-untyped-def]
            async with httpx.AsyncClient() as c:
                devs = await make_devices(fleet, fleet_kit, tmp_path, 3, "cams", c)
                r = fleet.admin.rollout("digits", "1.1.0", "cams", [100])
                for _ in range(40):
                    await asyncio.gather(*(d.poll_once() for d in devs))
                    if fleet.admin.get_rollout(r["id"])["state"] != "running":
                        break
                    await asyncio.sleep(0.1)
                return devs, fleet.admin.get_rollout(r["id"])

        devs, r = run(go())
        assert r["state"] == "completed" and r["devices"] == {"healthy": 3}, r
        assert [on_verified_working_model(d, fleet_kit) for d in devs] == ["1.1.0"] * 3
        assert handler.seen and all(p == f"/edge/{m['sha256']}.tar" for p, _ in handler.seen)
        assert [a for _, a in handler.seen] == [None] * len(handler.seen)
    finally:
        fleet.kill()
        cdn.shutdown()
