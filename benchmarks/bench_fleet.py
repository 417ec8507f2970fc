"""Fleet rollout at scale: 1,000 simulated devices (real updater code as asyncio tasks) take a 5 MB signed
bundle from a real fleet server process in waves 1% -> 10% -> 50% -> 100%; plus an interrupted download
resumed with HTTP Range.

Run: .venv/bin/python benchmarks/bench_fleet.py [--devices N]   (writes the 'fleet' section of RESULTS.md)
     .venv/bin/python benchmarks/bench_fleet.py --workers 2 --postgresql --shards 2
         (several server processes on a PostgreSQL started here, devices simulated in several processes;
          writes the 'fleet-workers' section)
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

from edgewise.agent.ota.slots import SlotSet  # noqa: E402
from edgewise.agent.ota.updater import Updater, enroll  # noqa: E402
from edgewise.bundle import Manifest, write_bundle  # noqa: E402
from edgewise.bundle.selftest import add_golden  # noqa: E402
from edgewise.bundle.signing import TrustStore, generate_keys, load_private, load_public, sign_bundle  # noqa: E402
from edgewise.sim.fleet import run_sharded  # noqa: E402
from tests.harness import ADMIN, FleetProc, start_postgres  # noqa: E402

HIDDEN = 18_500  # (64 + 10) x 18,500 fp32 weights: a 5.5 MB model, a 5.1 MB archive


def big_bundle(out: Path, version: str, key: Path, hidden: int = HIDDEN) -> Path:
    """A signed two-layer MLP bundle; `hidden` sets its size (296 bytes per unit: 5.5 MB by default)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.1, (64, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (hidden, 10)).astype(np.float32), "w2")
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


async def resume(fleet: FleetProc, kit: Path) -> list[list[str]]:
    """Interrupt a download at about half (the task is cancelled mid-stream), then resume it."""
    async with httpx.AsyncClient() as c:
        token = fleet.admin.enroll_token(["resume"])
        ident = await enroll(c, fleet.url, token, "resume")
        fk = TrustStore()
        fk.add(load_public((await c.get(f"{fleet.url}/v1/keys/fleet.pub")).content))
        rk = TrustStore.load([kit / "release.pub"])
        r = fleet.admin.rollout("wide", "1.1.0", "resume", [100])
        whole = Updater(ident, SlotSet(kit / "resume-whole"), rk, fk, c)
        a = (await whole.fetch_assignment())["models"][0]
        await whole._download(a)
        size = int(a["size"])
        cut = Updater(ident, SlotSet(kit / "resume-cut"), rk, fk, c)
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


def server_cpu(fleet: FleetProc) -> float:
    """CPU seconds of the server: the supervisor and its workers (live ones; a replaced one's are lost)."""
    pids = [fleet.proc.pid] + (fleet.worker_pids() if fleet.workers > 1 else [])
    return sum(cpu_seconds(p) for p in pids)


def _server_rows(fleet: FleetProc, what: str) -> list[list[str]]:
    rows = []
    for pid, h in sorted(fleet.health_by_worker().items()):
        lat = h["latency"].get(what) or {}
        if lat:
            label = {"device": "device API", "download": "downloads", "static": "static-file downloads"}[what]
            rows.append([f"{label} at the server, worker {pid}: p50 / p99",
                         f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms ({lat['n']:,} requests; "
                         f"{h.get('db_connections')} database connections)"])
    return rows


def sharded_rollout(fleet: FleetProc, kit: Path, n: int, shards: int, poll_s: float,
                    kill_worker: bool = False, timeout_s: float = 600.0, device_timeout_s: float = 30.0
                    ) -> list[list[str]]:
    """The same rollout with the devices split over `shards` simulator processes; the time each wave
    started; with `kill_worker`, one server worker is killed (SIGKILL) when the third wave starts."""
    import signal
    import threading

    fleet.admin.upload(kit / "b110")
    cpu, rid, waves, killed = [0.0], [], {}, []
    stop = threading.Event()

    def start() -> str:
        cpu[0] = server_cpu(fleet)
        rid.append(fleet.admin.rollout("wide", "1.1.0", "sim", [1, 10, 50, 100], gate={"wave_timeout_s": 600})["id"])
        waves[0] = time.perf_counter()
        threading.Thread(target=watch, daemon=True).start()
        return rid[0]

    def watch() -> None:
        while not stop.is_set():
            try:
                w = fleet.admin.get_rollout(rid[0])["wave"]
            except Exception:  # noqa: BLE001 - a worker being replaced: ask again
                w = -1
            if w >= 0 and w not in waves:
                waves[w] = time.perf_counter()
                if kill_worker and w == 2 and not killed:
                    killed.append(fleet.worker_pids()[0])
                    os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.2)

    t = time.perf_counter()
    res = run_sharded(fleet.url, ADMIN, n, shards, "sim", kit / "devices", [kit / "release.pub"], start,
                      poll_s=poll_s, timeout_s=timeout_s, device_timeout_s=device_timeout_s)
    stop.set()
    end = time.perf_counter()
    took, used = res["took"], server_cpu(fleet) - cpu[0]
    final = fleet.admin.get_rollout(rid[0])
    starts = [waves[w] for w in sorted(waves)] + [end]
    per_wave = ", ".join(f"{b - a:.1f}" for a, b in zip(starts, starts[1:]))
    api, dl = np.asarray(res["api_ms"]), np.asarray(res["download_ms"])
    size = (kit / "b110" / "model.onnx").stat().st_size
    rows = [["devices, simulator processes, server workers", f"{n:,}, {shards}, {fleet.workers}"],
            ["database", "PostgreSQL" if fleet.db else "SQLite"],
            ["bundle (model.onnx)", f"{size / 1e6:.2f} MB"],
            ["enrolment (all simulator processes)", f"{end - t - took:.1f} s"],
            [f"rollout 1% -> 10% -> 50% -> 100% (each device polls every ~{poll_s:g} s, "
             f"{device_timeout_s:g} s per call)",
             f"{took:.1f} s to 100% installed, state {final['state']}"],
            ["time per wave (1%, 10%, 50%, 100%)", f"{per_wave} s"],
            ["devices on the new version / failed", f"{res['versions'].get('wide 1.1.0', 0):,} / "
                                                    f"{final['devices'].get('failed', 0)}"],
            ["fleet server CPU during the rollout (supervisor and live workers)",
             f"{used:.1f} s ({used / took * 100:.0f}% of one core; {used / n * 1000:.1f} s per 1,000 devices)"]]
    if kill_worker:
        rows.append(["a worker killed (SIGKILL) when the third wave started", f"pid {killed[0] if killed else '-'}; "
                     f"replaced by the supervisor; assignments for the rollout: "
                     f"{final['devices']} (one per device)"])
    rows += _server_rows(fleet, "device") + _server_rows(fleet, "download") + _server_rows(fleet, "static")
    rows += [["device API seen by the devices p50 / p99 (incl. the simulators' own queueing)",
              f"{np.percentile(api, 50):.1f} / {np.percentile(api, 99):.1f} ms ({len(api):,} calls)"],
             ["download to first byte seen by the devices p50 / p99",
              f"{np.percentile(dl, 50):.1f} / {np.percentile(dl, 99):.1f} ms"],
             ["steps that failed on the devices", str(res["errors"])]]
    rows += [[f"failed step: {why}", f"{k:,}"] for why, k in res["failures"].items()]
    return rows


def steady(fleet: FleetProc, kit: Path, n: int, shards: int, poll_s: float, seconds: float) -> list[list[str]]:
    """`n` devices polling every ~poll_s (jittered) for `seconds`, nothing to install: what the server holds."""
    cpu = [0.0]

    def start() -> float:
        cpu[0] = server_cpu(fleet)
        return seconds

    t = time.perf_counter()
    res = run_sharded(fleet.url, ADMIN, n, shards, "steady", kit / "devices", [kit / "release.pub"], start,
                      poll_s=poll_s, timeout_s=seconds + 120)
    took, used = res["took"], server_cpu(fleet) - cpu[0]
    api = np.asarray(res["api_ms"])
    return ([["devices, simulator processes, server workers", f"{n:,}, {shards}, {fleet.workers}"],
             ["database", "PostgreSQL" if fleet.db else "SQLite"],
             ["enrolment", f"{time.perf_counter() - t - took:.1f} s"],
             [f"steady polling, each device every ~{poll_s:g} s with jitter, for", f"{took:.0f} s"],
             ["requests held", f"{len(api) / took:,.0f}/s ({len(api):,} calls)"],
             ["fleet server CPU", f"{used:.1f} s ({used / took * 100:.0f}% of one core)"]]
            + _server_rows(fleet, "device")
            + [["seen by the devices p50 / p99", f"{np.percentile(api, 50):.1f} / {np.percentile(api, 99):.1f} ms"],
               ["errors on the devices", str(res["errors"])]]
            + [[f"failed step: {why}", f"{k:,}"] for why, k in res["failures"].items()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=5.0, help="seconds between a device's polls (jittered)")
    ap.add_argument("--workers", type=int, default=1, help="fleet server processes (> 1 needs --postgresql)")
    ap.add_argument("--postgresql", action="store_true", help="start a PostgreSQL server here and use it")
    ap.add_argument("--shards", type=int, default=1, help="simulator processes the devices are split over")
    ap.add_argument("--kill-worker", action="store_true", help="kill one server worker when the third wave starts")
    ap.add_argument("--steady", type=float, default=0, help="no rollout: every device polls for this many seconds")
    ap.add_argument("--bundle-url", help="e.g. /bundles: bundles as static files, off the device route")
    ap.add_argument("--bundle-kb", type=float, default=0, help="the rolled-out model's size (default 5.5 MB)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds the rollout may take")
    ap.add_argument("--device-timeout", type=float, default=30, help="each simulated device's per-call timeout")
    args = ap.parse_args()
    kit = Path(tempfile.mkdtemp(prefix="edgewise-fleet-bench-"))
    fleet, stop_pg = None, None
    try:
        generate_keys(kit, "release")
        big_bundle(kit / "b110", "1.1.0", kit / "release.key",
                   int(args.bundle_kb * 1000 / 296) if args.bundle_kb else HIDDEN)
        db = None
        if args.postgresql:
            db, stop_pg = start_postgres()
        fleet = FleetProc(kit / "server", [kit / "release.pub"], db=db, workers=args.workers,
                          bundle_url=args.bundle_url).start()
        if args.steady:
            rows = steady(fleet, kit, args.devices, args.shards, args.poll, args.steady)
            res = None
        else:
            rows = sharded_rollout(fleet, kit, args.devices, args.shards, args.poll, args.kill_worker, args.timeout,
                                   args.device_timeout)
            res = None
            if args.workers == 1 and args.shards == 1 and not (args.postgresql or args.bundle_url):
                shutil.rmtree(kit / "devices", ignore_errors=True)
                res = asyncio.run(resume(fleet, kit))  # the plain setup: the 'fleet' section, with a resume
    finally:
        if fleet is not None:
            fleet.kill()
        if stop_pg is not None:
            stop_pg()
        shutil.rmtree(kit, ignore_errors=True)
    if res is None:
        title = ("steady polling" if args.steady else "rollout" + (", a worker killed mid-way" if args.kill_worker else "")
                 + (f", bundles as static files ({args.bundle_url})" if args.bundle_url else ""))
        md = (f"## Fleet at scale: {args.workers} workers, {args.shards} simulator processes, {title}\n\n"
              f"Machine: {machine()}. `fleet serve --workers {args.workers}`"
              + (" on a PostgreSQL server started here" if args.postgresql else "")
              + f"; the devices (the real updater, as asyncio tasks) split over {args.shards} simulator processes "
              "(`sim.fleet.run_sharded`); all on the same 2 cores over loopback.\n\n" + table(["measure", "value"], rows))
        print(md)
        section = ("fleet-steady" if args.steady else "fleet-workers") + f"-w{args.workers}"
        write_section(section + ("-kill" if args.kill_worker else "") + ("-static" if args.bundle_url else "")
                      + (f"-n{args.devices}" if args.devices != 1000 and not args.steady else ""), md)
        return
    md = (f"## Fleet: OTA rollout to simulated devices\n\nMachine: {machine()}. One fleet server process "
          "(uvicorn, SQLite) and one simulator process running every device as an asyncio task with the real updater "
          "(enrol, signed assignment, download, sha256, unpack, Ed25519 verification, ONNX Runtime self-test on "
          "golden pairs, A/B switch with fsync, health report), all on the same 2 cores over loopback.\n\n"
          + table(["measure", "value"], rows) + "\n\nResume after an interrupted download (HTTP Range):\n\n"
          + table(["measure", "value"], res) + "\n")
    print(md)
    write_section("fleet", md)


if __name__ == "__main__":
    main()
