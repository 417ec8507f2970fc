"""The updater inside a running agent: its own thread and event loop, switching the served model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from edgewise.agent.models import ModelManager
from edgewise.agent.slots import Slots
from edgewise.agent.updater import Identity, Updater
from edgewise.bundle.signing import TrustStore, load_public
from edgewise.errors import AgentError


class OtaThread:
    def __init__(self, ota_dir: Path, trust: list[Path], models: ModelManager, poll_s: float) -> None:
        if not trust:
            raise AgentError("fleet updates need --trust: the release public key(s) bundles must be signed with")
        self.ident = Identity.load(ota_dir / "device.json")
        if not (ota_dir / "fleet.pub").is_file():
            raise AgentError(f"no fleet key in {ota_dir / 'fleet.pub'}; enrol with `edgewise device enroll`")
        fleet_keys = TrustStore()
        fleet_keys.add(load_public(ota_dir / "fleet.pub"))
        self.release_keys, self.fleet_keys = TrustStore.load(trust), fleet_keys
        self.slots, self.models, self.poll_s = Slots(ota_dir / "slots"), models, poll_s
        self.recovered = self.slots.recover()
        if self.slots.active_dir is not None:  # serve what was installed before the restart
            models.register(self.slots.active_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="ota", daemon=True)
        self.updater: Updater | None = None

    def start(self) -> OtaThread:
        self._thread.start()
        return self

    def _main(self) -> None:
        import httpx

        async def go() -> None:
            self._stop = asyncio.Event()
            async with httpx.AsyncClient() as client:
                self.updater = Updater(self.ident, self.slots, self.release_keys, self.fleet_keys, client,
                                       on_switch=self.models.replace)
                await self.updater.run(self.poll_s, self._stop)

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(go())

    def status(self) -> dict[str, Any]:
        st = self.slots.state
        return {"device_id": self.ident.device_id, "active_slot": st.active, "model": st.model,
                "version": st.version, "last_serial": st.last_serial, "recovered": self.recovered,
                "last_steps": (self.updater.log[-5:] if self.updater else [])}

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
