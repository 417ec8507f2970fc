"""MQTT notifications: a device polling every ~2 minutes installs within seconds of a rollout's start."""

from __future__ import annotations

import pytest

import subprocess
import sys
import time

from ..harness import AgentProc, FleetProc, free_port, wait_rollout
from ..agent.test_mqtt import broker  # noqa: F401  (a real Mosquitto, started per test)


def _listening_agent(fleet, kit, tmp_path, broker_port: int) -> AgentProc:  # type: ignore[no-untyped-def]
    """1.0.0 in the registry, and an agent enrolled with tag 'lobby' that polls only every 60-180 s and listens
    on the broker; returned once its first poll (which finds nothing) is done and it has subscribed."""
    fleet.admin.upload(kit["bundles"]["1.0.0"])
    token = fleet.admin.enroll_token(["lobby"])
    subprocess.run([sys.executable, "-m", "edgewise.cli", "device", "enroll", "--token", token,
                    "--server", fleet.url, "--data-dir", str(tmp_path / "a")], check=True, capture_output=True)
    agent = AgentProc(["--tier", "endpoint", "--fleet-poll", "120", "--trust", str(kit["pub"]),
                       "--mqtt", f"127.0.0.1:{broker_port}"], free_port(), tmp_path / "a").start()
    deadline = time.time() + 10
    while time.time() < deadline:
        ota = agent.get("/health")["ota"]
        if ota["polls"] >= 1 and ota["notify_subscribed"] and ota["tags"] == ["lobby"]:
            break
        time.sleep(0.1)
    assert ota["polls"] == 1 and ota["notify_subscribed"] and ota["models"] == {}, ota
    return agent


@pytest.mark.e2e
def test_a_notified_agent_updates_long_before_its_next_poll(fleet_kit, tmp_path, broker):  # noqa: F811
    # Prepare: the fleet server publishes to the broker; the agent polls only every 60-180 s
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], mqtt=f"127.0.0.1:{broker}").start()
    agent = None
    try:
        agent = _listening_agent(fleet, fleet_kit, tmp_path, broker)
        # Execute
        t0 = time.time()
        r = fleet.admin.rollout("digits", "1.0.0", "lobby", [100])
        wait_rollout(fleet, r["id"], ("completed",), timeout=30)
        took = time.time() - t0
        health = agent.get("/health")
    finally:
        if agent is not None:
            agent.kill()
        fleet.kill()
    # Assert: installed because it was told, far sooner than the 60 s minimum poll wait
    assert took < 20 and health["ota"]["models"]["digits"]["version"] == "1.0.0" and health["ota"]["notifications"] >= 1


@pytest.mark.e2e
def test_a_wave_is_announced_once_per_tag_and_reaches_a_site_broker_over_a_bridge(fleet_kit, tmp_path):
    """The fleet publishes on its broker; the site runs its own Mosquitto, bridged to the fleet's for
    edgewise/fleet/#; the agent knows only the site broker. A wave is one message on the tag's topic."""
    from ..agent.test_mqtt import BROKER
    from ..harness import Broker

    central = Broker(BROKER, tmp_path / "central").start()
    site = Broker(BROKER, tmp_path / "site", extra=(f"connection to-fleet\naddress 127.0.0.1:{central.port}\n"
                                                    "topic edgewise/fleet/# in 1\ncleansession false\n")).start()
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], mqtt=f"127.0.0.1:{central.port}",
                      extra=["--notify-tag-min", "1"]).start()
    agent = None
    try:
        agent = _listening_agent(fleet, fleet_kit, tmp_path, site.port)  # its tags came with its first poll
        time.sleep(1.0)  # the bridge carries the new subscription's topic pattern already (edgewise/fleet/#)
        t0 = time.time()
        r = fleet.admin.rollout("digits", "1.0.0", "lobby", [100])
        wait_rollout(fleet, r["id"], ("completed",), timeout=40)
        took = time.time() - t0
        health = agent.get("/health")
        workers = fleet.health_by_worker().values()  # with --workers N, the one that ticked sent it
        server = {k: sum(h[k] or 0 for h in workers) for k in ("notifications", "tag_notifications")}
    finally:
        if agent is not None:
            agent.kill()
        fleet.kill()
        site.stop()
        central.stop()
    # Assert: told through the site broker on the tag's topic (one message, not one per device), and
    # installed after a jitter of at most a quarter of its poll interval's 10 s cap: far before a poll
    assert health["ota"]["models"]["digits"]["version"] == "1.0.0" and health["ota"]["notifications_by_tag"] >= 1, health["ota"]
    assert server["tag_notifications"] == 1 and server["notifications"] == 0, server
    assert took < 30
