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
    def __init__(self, ota_dir: Path, trust: list[Path], models: ModelManager, poll_s: float,
                 mqtt: str | None = None) -> None:
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
        self._wake: asyncio.Event | None = None
        self.mqtt, self.notified, self._mqtt_client = mqtt, 0, None
        self._thread = threading.Thread(target=self._main, name="ota", daemon=True)
        self.updater: Updater | None = None

    def start(self) -> OtaThread:
        self._thread.start()
        return self

    def _main(self) -> None:
        import httpx

        async def go() -> None:
            self._stop, self._wake = asyncio.Event(), asyncio.Event()
            if self.mqtt:
                self._subscribe()
            async with httpx.AsyncClient() as client:
                self.updater = Updater(self.ident, self.slots, self.release_keys, self.fleet_keys, client,
                                       on_switch=self.models.replace)
                await self.updater.run(self.poll_s, self._stop, self._wake)

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(go())

    def _subscribe(self) -> None:
        """Persistent MQTT session on this device's topic: a notification wakes the updater now."""
        import paho.mqtt.client as mqtt

        from edgewise.fleet.notify import TOPIC
        from edgewise.hostport import parse_hostport

        host, port = parse_hostport(self.mqtt or "", "MQTT broker", AgentError)
        topic = TOPIC.format(device_id=self.ident.device_id)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgewise-ota-{self.ident.device_id}",
                        clean_session=False)

        def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
            client.subscribe(topic, qos=1)

        def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
            self.notified += 1
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._wake.set)

        c.on_connect, c.on_message = on_connect, on_message
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.connect_async(host, port, keepalive=30)  # polling works without the broker; this only speeds it up
        c.loop_start()
        self._mqtt_client = c

    def status(self) -> dict[str, Any]:
        st = self.slots.state
        return {"device_id": self.ident.device_id, "active_slot": st.active, "model": st.model,
                "version": st.version, "last_serial": st.last_serial, "recovered": self.recovered,
                "notifications": self.notified,
                "last_steps": (self.updater.log[-5:] if self.updater else [])}

    def stop(self) -> None:
        if self._mqtt_client is not None:
            self._mqtt_client.loop_stop()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
