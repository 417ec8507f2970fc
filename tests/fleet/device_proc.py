"""A device as its own process, for kill -9 tests: the real Updater, SIGKILLed by itself at a chosen step.

usage: python device_proc.py IDENTITY SLOTS RELEASE_PUB FLEET_PUB [KILL_AT]
KILL_AT is a step name (the process dies just before reporting it) or 'midstream' (first bytes received).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from edgewise.agent.ota.slots import SlotSet
from edgewise.agent.ota.updater import Identity, Updater
from edgewise.bundle.signing import TrustStore


def main() -> None:
    ident_path, slots_dir, release, fleet_pub = (Path(a) for a in sys.argv[1:5])
    kill_at = sys.argv[5] if len(sys.argv) > 5 else ""

    class Dying(Updater):
        async def report(self, slots, model, step, ok, serial, detail="", **m):  # type: ignore[no-untyped-def]
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            await super().report(slots, model, step, ok, serial, detail, **m)

        def __setattr__(self, name, value):  # type: ignore[no-untyped-def]
            if name == "bytes_downloaded" and value and kill_at == "midstream":
                part = next(Path(slots_dir, "download").glob("*.part"), None)
                if part is not None:  # some bytes are on disk, the rest never will be
                    os.kill(os.getpid(), signal.SIGKILL)
            object.__setattr__(self, name, value)

    async def go() -> None:
        fleet = TrustStore.load([fleet_pub])
        async with httpx.AsyncClient() as c:
            u = Dying(Identity.load(ident_path), SlotSet(slots_dir), TrustStore.load([release]), fleet, c)
            for _ in range(20):
                outcome = await u.poll_once()
                print(outcome, flush=True)
                if outcome in ("installed", "current", "failed", "rolled_back"):
                    return
                await asyncio.sleep(0.1)

    asyncio.run(go())


if __name__ == "__main__":
    main()
