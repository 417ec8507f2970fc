"""Many devices in one process: each a real `Updater` (same HTTP client, verification, slot switch),
run as asyncio tasks against a real fleet server. Thousands of device processes do not fit one machine;
thousands of tasks do."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgewise.agent.ota.slots import SlotSet
from edgewise.agent.ota.updater import Updater, enroll, model_selftest
from edgewise.bundle.signing import TrustStore, load_public
from edgewise.fleet.client import FleetClient
from edgewise.protocol import FLEET_KEY


@dataclass
class Fleet:
    devices: list[Updater]

    async def close(self) -> None:
        await asyncio.gather(*(d.client.aclose() for d in self.devices))

    def versions(self) -> dict[str, int]:
        """How many devices run each model's version ('digits 1.1.0'), over every model they run."""
        return dict(Counter(f"{m} {v}" for d in self.devices for m, v in d.slots.versions().items()))


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def device_client(**kw: Any) -> httpx.AsyncClient:
    """What one device holds: its own client with a couple of connections. (One shared pool for a
    thousand devices costs O(connections) per request inside httpcore.) The TLS context is shared:
    building one loads the CA bundle, ~45 ms a client."""
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=2, max_keepalive_connections=2), verify=_tls(),
                             **kw)


async def enroll_fleet(server: str, admin_token: str, n: int, tag: str, root: Path, release: list[Path],
                       make_client: Any = device_client, selftest: Any = model_selftest,
                       timeout_s: float = 30.0) -> Fleet:
    """`n` devices enrolled for real. `timeout_s`: each device's per-call timeout; thousands of devices
    sharing one simulator process wait on its event loop too, which a real device does not."""
    admin = FleetClient(server, admin_token)
    tokens = await asyncio.to_thread(admin.enroll_tokens, [tag], n)
    fleet_keys = TrustStore()
    async with httpx.AsyncClient() as c:
        fleet_keys.add(load_public((await c.get(f"{server}{FLEET_KEY}", timeout=10)).content))
    release_keys = TrustStore.load(release)
    sem = asyncio.Semaphore(64)

    async def one(i: int, token: str) -> Updater:
        client = make_client()
        async with sem:
            ident = await enroll(client, server, token, f"sim-{i:05d}")
        return Updater(ident, SlotSet(root / f"sim-{i:05d}"), release_keys, fleet_keys, client, selftest=selftest,
                       timeout_s=timeout_s, retries=6)

    return Fleet(list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))))


async def run_until(fleet: Fleet, done: Any, poll_s: float = 2.0, timeout_s: float = 300.0) -> float:
    """Every device polls with jitter until `done()` is true; returns the seconds it took."""
    t0 = time.perf_counter()
    stop = asyncio.Event()

    async def device(d: Updater) -> None:
        await asyncio.sleep(poll_s * random.random())  # devices do not boot in lockstep either
        await d.run(poll_s, stop)  # the agent's own polling loop

    async def watch() -> None:
        while time.perf_counter() - t0 < timeout_s:
            if await asyncio.to_thread(done):
                break
            await asyncio.sleep(0.25)
        stop.set()

    await asyncio.gather(watch(), *(device(d) for d in fleet.devices))
    return time.perf_counter() - t0


def latency_hooks() -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """httpx event hooks that time what a device asks (request sent to response headers, ms), split into
    API calls and bundle downloads; and the lists they fill."""
    lat: dict[str, list[float]] = {"api": [], "download": []}

    async def on_request(req: httpx.Request) -> None:
        req.extensions["t0"] = time.perf_counter()

    async def on_response(resp: httpx.Response) -> None:
        path = resp.request.url.path
        kind = "download" if "/bundles/" in path or path.endswith(".tar") else "api"
        lat[kind].append((time.perf_counter() - resp.request.extensions["t0"]) * 1e3)

    return lat, {"request": [on_request], "response": [on_response]}


def _shard(server: str, admin_token: str, idx: int, n: int, tag: str, root: Path, release: list[Path],
           poll_s: float, timeout_s: float, conn: Any, device_timeout_s: float = 30.0) -> None:
    """One simulator process: enrol `n` devices, say so, wait for the rollout id, poll until the rollout ends;
    send back how long it took, the versions the devices ended on, and what the devices saw (latency)."""
    lat, hooks = latency_hooks()

    async def main() -> dict[str, Any]:
        sim = await enroll_fleet(server, admin_token, n, tag, root / f"shard-{idx}", release,
                                 lambda: device_client(event_hooks=hooks), timeout_s=device_timeout_s)
        lat["api"].clear()
        conn.send(("enrolled", idx))
        rid = await asyncio.to_thread(conn.recv)
        admin = FleetClient(server, admin_token)
        if isinstance(rid, str):  # a rollout: until it ends
            took = await run_until(sim, lambda: admin.get_rollout(rid)["state"] != "running", poll_s, timeout_s)
        else:  # steady polling for that many seconds
            end = time.monotonic() + float(rid)
            took = await run_until(sim, lambda: time.monotonic() > end, poll_s, timeout_s)
        await sim.close()
        failed = Counter(f"{step}: {detail[:80]}" for d in sim.devices for step, ok, detail in d.log if not ok)
        return {"took": took, "versions": sim.versions(), "api_ms": lat["api"], "download_ms": lat["download"],
                "errors": sum(failed.values()), "failures": dict(failed.most_common(8))}

    try:
        conn.send(("done", asyncio.run(main())))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        conn.send(("error", f"shard {idx}: {type(e).__name__}: {e}"))


def run_sharded(server: str, admin_token: str, n: int, shards: int, tag: str, root: Path, release: list[Path],
                start_rollout: Any, poll_s: float = 2.0, timeout_s: float = 600.0,
                device_timeout_s: float = 30.0) -> dict[str, Any]:
    """`n` devices split over `shards` simulator processes, so one Python process is not what limits a
    large rollout. All enrol first; then `start_rollout()` runs: it returns the rollout id, and every device
    polls until the rollout ends; or a number of seconds, and every device polls that long. Returns the
    seconds it took, the versions the devices ended on, the device-side latencies (ms) of the API calls and
    the downloads, how many steps failed on the devices (`errors`) and the most frequent (`failures`)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    pipes, procs = [], []
    per = [n // shards + (i < n % shards) for i in range(shards)]
    for i, k in enumerate(per):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_shard, args=(server, admin_token, i, k, f"{tag}", root, release, poll_s, timeout_s,
                                             child, device_timeout_s), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    try:
        for c in pipes:
            kind, what = c.recv()
            if kind != "enrolled":
                raise RuntimeError(what)
        t0 = time.perf_counter()
        rid = start_rollout()
        for c in pipes:
            c.send(rid)
        results = []
        for c in pipes:
            kind, what = c.recv()
            if kind != "done":
                raise RuntimeError(what)
            results.append(what)
        took = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    versions: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for r in results:
        versions.update(r["versions"])
        failures.update(r["failures"])
    return {"took": took, "versions": dict(versions), "api_ms": [x for r in results for x in r["api_ms"]],
            "download_ms": [x for r in results for x in r["download_ms"]],
            "errors": sum(r["errors"] for r in results), "failures": dict(failures.most_common(5))}
