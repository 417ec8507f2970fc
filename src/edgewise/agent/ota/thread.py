"""The updater inside a running agent: its own thread and event loop, switching the served model."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

from edgewise.agent.ota.slots import SlotSet
from edgewise.agent.ota.updater import Identity, Updater
from edgewise.agent.serve.models import ModelManager
from edgewise.bundle.signing import TrustStore, load_public
from edgewise.errors import AgentError
from edgewise.fsutil import atomic_write

TAG_JITTER_S = 10.0  # told on a tag's topic, a device waits up to this long (and at most a quarter poll)

IDENTITY, FLEET_PUB = "device.json", "fleet.pub"  # in DATA_DIR/ota: what enrolment leaves for the OtaThread


def enroll_device(server: str, token: str, data_dir: Path, name: str = "",
                  fleet_key: Path | None = None) -> Identity:
    """Trade a one-time token for a device credential (kept 0600 in DATA_DIR/ota) and pin the fleet's
    public key: provisioned out of band (`fleet_key`), or fetched from the server at enrolment."""
    import socket

    import httpx

    from edgewise.agent.ota.updater import enroll
    from edgewise.bundle.signing import public_pem
    from edgewise.protocol import FLEET_KEY

    server = server.rstrip("/")

    async def go() -> tuple[Identity, bytes]:
        async with httpx.AsyncClient() as c:
            ident = await enroll(c, server, token, name or socket.gethostname())
            if fleet_key is not None:
                pem = fleet_key.read_bytes()
            else:
                try:
                    pem = (await c.get(f"{server}{FLEET_KEY}", timeout=10)).content
                except httpx.HTTPError as e:
                    raise AgentError(f"cannot fetch the fleet key from {server}: {e}") from e
            return ident, public_pem(load_public(pem))

    ident, pem = asyncio.run(go())
    ota = Path(data_dir) / "ota"
    ident.save(ota / IDENTITY)
    atomic_write(ota / FLEET_PUB, pem)
    return ident


class OtaThread:
    def __init__(self, ota_dir: Path, trust: list[Path], models: ModelManager, poll_s: float,
                 mqtt: str | None = None) -> None:
        if not trust:
            raise AgentError("fleet updates need --trust: the release public key(s) bundles must be signed with")
        self.ident = Identity.load(ota_dir / IDENTITY)
        if not (ota_dir / FLEET_PUB).is_file():
            raise AgentError(f"no fleet key in {ota_dir / FLEET_PUB}; enrol with `edgewise device enroll`")
        fleet_keys = TrustStore()
        fleet_keys.add(load_public(ota_dir / FLEET_PUB))
        self.release_keys, self.fleet_keys = TrustStore.load(trust), fleet_keys
        self.slots, self.models, self.poll_s = SlotSet(ota_dir / "slots"), models, poll_s
        self.recovered = self.slots.recover()
        for name in self.slots.models():  # serve what was installed before the restart
            models.register(self.slots.of(name).active_dir)  # type: ignore[arg-type]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.mqtt, self.notified, self.subscribed, self._mqtt_client = mqtt, 0, False, None
        self.notified_by_tag = 0
        self._tag_topics: list[str] = []
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
                self.updater.on_tags = self._follow_tags
                await self.updater.run(self.poll_s, self._stop, self._wake)

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(go())

    def _subscribe(self) -> None:
        """Persistent MQTT session on this device's topic, and on its tags' (learned from its signed
        assignment): a notification wakes the updater now; one on a tag's topic, after a random delay, so a
        wave of thousands does not poll in the same second."""
        import paho.mqtt.client as mqtt

        from edgewise.hostport import parse_hostport
        from edgewise.protocol import NOTIFY_TOPIC

        host, port = parse_hostport(self.mqtt or "", "MQTT broker", AgentError)
        topic = NOTIFY_TOPIC.format(device_id=self.ident.device_id)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgewise-ota-{self.ident.device_id}",
                        clean_session=False)

        def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
            client.subscribe([(t, 1) for t in [topic, *self._tag_topics]])

        def on_subscribe(client, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
            self.subscribed = not any(getattr(r, "is_failure", False) for r in reasons)

        def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
            self.notified += 1
            delay = 0.0
            if msg.topic != topic:
                self.notified_by_tag += 1
                delay = random.uniform(0, min(TAG_JITTER_S, self.poll_s / 4))
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._wake.set)

        c.on_connect, c.on_message, c.on_subscribe = on_connect, on_message, on_subscribe
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.connect_async(host, port, keepalive=30)  # polling works without the broker; this only speeds it up
        c.loop_start()
        self._mqtt_client = c

    def _follow_tags(self, tags: list[str]) -> None:
        from edgewise.protocol import NOTIFY_TAG_TOPIC

        topics = [NOTIFY_TAG_TOPIC.format(tag=t) for t in tags]
        gone = [t for t in self._tag_topics if t not in topics]
        self._tag_topics = topics
        c = self._mqtt_client
        if c is None:
            return
        if gone:
            c.unsubscribe(gone)
        if topics:
            c.subscribe([(t, 1) for t in topics])

    def status(self) -> dict[str, Any]:
        models = {}
        outcomes = self.updater.outcomes if self.updater else {}
        for name in sorted({*self.slots.models(), *outcomes}):  # installed, or assigned and not (yet) installed
            st = self.slots.of(name).state
            models[name] = {"version": st.version, "active_slot": st.active, "installed_serial": st.installed_serial,
                            "outcome": outcomes.get(name)}
        return {"device_id": self.ident.device_id, "models": models, "last_serial": self.slots.last_serial,
                "recovered": self.recovered,
                "notifications": self.notified, "notifications_by_tag": self.notified_by_tag,
                "notify_subscribed": self.subscribed, "tags": self.updater.tags if self.updater else [],
                "polls": self.updater.polls if self.updater else 0,
                "last_steps": (self.updater.log[-5:] if self.updater else [])}

    def stop(self) -> None:
        if self._mqtt_client is not None:
            self._mqtt_client.loop_stop()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
