"""Fleet rollout at scale: 1,000 simulated devices (real updater code as asyncio tasks) take a 5 MB signed
bundle from a real fleet server process in waves 1% -> 10% -> 50% -> 100%; plus an interrupted download
resumed with HTTP Range.

Run: .venv/bin/python benchmarks/bench_fleet.py [--devices N]   (writes the 'fleet' section of RESULTS.md)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, table, write_section  # noqa: E402

from edgewise.agent.ota.slots import Slots  # noqa: E402
from edgewise.agent.ota.updater import Updater, enroll  # noqa: E402
from edgewise.bundle import Manifest, write_bundle  # noqa: E402
from edgewise.bundle.selftest import add_golden  # noqa: E402
from edgewise.bundle.signing import TrustStore, generate_keys, load_private, load_public, sign_bundle  # noqa: E402
from edgewise.sim.fleet import device_client, enroll_fleet, run_until  # noqa: E402
from tests.harness import ADMIN, FleetProc  # noqa: E402

HIDDEN = 18_500  # (64 + 10) x 18,500 fp32 weights: a 5.5 MB model, a 5.1 MB archive


def big_bundle(out: Path, version: str, key: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.1, (64, HIDDEN)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (HIDDEN, 10)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], [w1, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = Manifest("wide", version, "edge-node", [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}],
                 [{"name": "y", "dtype": "float32", "shape": ["batch", 10]}], [str(i) for i in range(10)],
                 {"input_range": [0.0, 1.0]}, "fp32", [], {})
    write_bundle(out, m, {"model.onnx": model.SerializeToString()})
    add_golden(out)
    sign_bundle(out, load_private(key))
    return out


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rollout(fleet: FleetProc, kit: Path, n: int, poll_s: float) -> list[list[str]]:
    lat: dict[str, list[float]] = {"api": [], "download": []}

    async def on_request(req: httpx.Request) -> None:
        req.extensions["t0"] = time.perf_counter()

    async def on_response(resp: httpx.Response) -> None:
        kind = "download" if "/bundles/" in resp.request.url.path else "api"
        lat[kind].append((time.perf_counter() - resp.request.extensions["t0"]) * 1e3)

    hooks = {"request": [on_request], "response": [on_response]}
    if True:
        t = time.perf_counter()
        sim = await enroll_fleet(fleet.url, ADMIN, n, "sim", kit / "devices", [kit / "release.pub"],
                                 lambda: device_client(event_hooks=hooks))
        enroll_s = time.perf_counter() - t
        print(f"enrolled {n} devices in {enroll_s:.1f} s", flush=True)
        lat["api"].clear()
        fleet.admin.upload(kit / "b110")
        cpu0 = cpu_seconds(fleet.proc.pid)
        r = fleet.admin.rollout("wide", "1.1.0", "sim", [1, 10, 50, 100], gate={"wave_timeout_s": 120})
        took = await run_until(sim, lambda: fleet.admin.get_rollout(r["id"])["state"] != "running", poll_s=poll_s,
                               timeout_s=600)
        cpu = cpu_seconds(fleet.proc.pid) - cpu0
        at_server = httpx.get(f"{fleet.url}/health").json()["latency"]
        server_lat, server_dl = at_server["device"], at_server["download"]
        await sim.close()
    final = fleet.admin.get_rollout(r["id"])
    versions = sim.versions()
    failed = final["devices"].get("failed", 0)
    size = fleet.admin.models()[0]["size"]
    return [["devices", f"{n:,}"], ["bundle archive", f"{size / 1e6:.2f} MB"],
            ["enrolment of all devices", f"{enroll_s:.1f} s"],
            [f"rollout 1% -> 10% -> 50% -> 100% (each device polls every ~{poll_s:g} s)",
             f"{took:.1f} s, state {final['state']}"],
            ["devices on the new version / failed", f"{versions.get('1.1.0', 0):,} / {failed}"],
            ["fleet server CPU during the rollout", f"{cpu:.1f} s ({cpu / took * 100:.0f}% of one core)"],
            ["device API latency at the server p50 / p99 (assignments and reports)",
             f"{server_lat['p50_ms']:.1f} / {server_lat['p99_ms']:.1f} ms ({server_lat['n']:,} requests)"],
            ["bundle downloads at the server, request to last byte, p50 / p99",
             f"{server_dl['p50_ms']:.0f} / {server_dl['p99_ms']:.0f} ms ({server_dl['n']:,} downloads)"],
            ["the same seen by the devices p50 / p99 (assignment + reports; includes the simulator's own queueing)",
             f"{np.percentile(lat['api'], 50):.1f} / {np.percentile(lat['api'], 99):.1f} ms ({len(lat['api']):,} calls)"],
            ["download time to first byte p50 / p99", f"{np.percentile(lat['download'], 50):.1f} / "
                                                      f"{np.percentile(lat['download'], 99):.1f} ms"]]


async def resume(fleet: FleetProc, kit: Path) -> list[list[str]]:
    """Interrupt a download at about half (the task is cancelled mid-stream), then resume it."""
    async with httpx.AsyncClient() as c:
        token = fleet.admin.enroll_token(["resume"])
        ident = await enroll(c, fleet.url, token, "resume")
        fk = TrustStore()
        fk.add(load_public((await c.get(f"{fleet.url}/v1/keys/fleet.pub")).content))
        rk = TrustStore.load([kit / "release.pub"])
        r = fleet.admin.rollout("wide", "1.1.0", "resume", [100])
        whole = Updater(ident, Slots(kit / "resume-whole"), rk, fk, c)
        a = await whole.fetch_assignment()
        await whole._download(a)
        size = int(a["size"])
        cut = Updater(ident, Slots(kit / "resume-cut"), rk, fk, c)
        task = asyncio.create_task(cut._download(a))
        while cut.bytes_downloaded < size // 2:
            await asyncio.sleep(0.001)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        before = cut.bytes_downloaded
        await cut._download(a)
        fleet.admin.control(r["id"], "abort")
    return [["uninterrupted download", f"{whole.bytes_downloaded:,} bytes"],
            ["interrupted at", f"{before:,} bytes ({before / size * 100:.0f}%)"],
            ["interrupted + resumed (Range), total received", f"{cut.bytes_downloaded:,} bytes = "
                                                               f"{cut.bytes_downloaded / whole.bytes_downloaded:.3f}x"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=5.0, help="seconds between a device's polls (jittered)")
    args = ap.parse_args()
    kit = Path(tempfile.mkdtemp(prefix="edgewise-fleet-bench-"))
    fleet = None
    try:
        generate_keys(kit, "release")
        big_bundle(kit / "b110", "1.1.0", kit / "release.key")
        fleet = FleetProc(kit / "server", [kit / "release.pub"]).start()
        rows = asyncio.run(rollout(fleet, kit, args.devices, args.poll))
        shutil.rmtree(kit / "devices", ignore_errors=True)
        res = asyncio.run(resume(fleet, kit))
    finally:
        if fleet is not None:
            fleet.kill()
        shutil.rmtree(kit, ignore_errors=True)
    md = (f"## Fleet: OTA rollout to simulated devices\n\nMachine: {machine()}. One fleet server process "
          "(uvicorn, SQLite) and one process running every device as an asyncio task with the real updater "
          "(enrol, signed assignment, download, sha256, unpack, Ed25519 verification, ONNX Runtime self-test on "
          "golden pairs, A/B switch with fsync, health report), all on the same 2 cores over loopback.\n\n"
          + table(["measure", "value"], rows) + "\n\nResume after an interrupted download (HTTP Range):\n\n"
          + table(["measure", "value"], res) + "\n")
    print(md)
    write_section("fleet", md)


if __name__ == "__main__":
    main()
