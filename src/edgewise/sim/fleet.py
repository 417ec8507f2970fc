"""Many devices in one process: each a real `Updater` (same HTTP client, verification, slot switch),
run as asyncio tasks against a real fleet server. Thousands of device processes do not fit one machine;
thousands of tasks do."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgewise.agent.ota.slots import Slots
from edgewise.agent.ota.updater import Updater, enroll, model_selftest
from edgewise.bundle.signing import TrustStore, load_public
from edgewise.fleet.client import FleetClient
from edgewise.protocol import FLEET_KEY


@dataclass
class Fleet:
    devices: list[Updater]

    async def close(self) -> None:
        await asyncio.gather(*(d.client.aclose() for d in self.devices))

    def versions(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for d in self.devices:
            out[d.slots.state.version] = out.get(d.slots.state.version, 0) + 1
        return out


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
                       make_client: Any = device_client, selftest: Any = model_selftest) -> Fleet:
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
        return Updater(ident, Slots(root / f"sim-{i:05d}"), release_keys, fleet_keys, client, selftest=selftest,
                       timeout_s=30.0, retries=6)

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
