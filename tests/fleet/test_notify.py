"""MQTT notifications: a device polling every ~2 minutes installs within seconds of a rollout's start."""

from __future__ import annotations

import pytest

import subprocess
import sys
import time

from ..harness import AgentProc, FleetProc, free_port, wait_rollout
from ..agent.test_mqtt import broker  # noqa: F401  (a real Mosquitto, started per test)


@pytest.mark.e2e
def test_a_notified_agent_updates_long_before_its_next_poll(fleet_kit, tmp_path, broker):  # noqa: F811
    # Prepare: the fleet server publishes to the broker; the agent polls only every 60-180 s
    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]], mqtt=f"127.0.0.1:{broker}").start()
    agent = None
    try:
        fleet.admin.upload(fleet_kit["bundles"]["1.0.0"])
        token = fleet.admin.enroll_token(["lobby"])
        subprocess.run([sys.executable, "-m", "edgewise.cli", "device", "enroll", "--token", token,
                        "--server", fleet.url, "--data-dir", str(tmp_path / "a")], check=True, capture_output=True)
        agent = AgentProc(["--tier", "endpoint", "--fleet-poll", "120", "--trust", str(fleet_kit["pub"]),
                           "--mqtt", f"127.0.0.1:{broker}"], free_port(), tmp_path / "a").start()
        deadline = time.time() + 10  # its first poll (at start) finds nothing; then it sleeps >= 60 s
        while time.time() < deadline:
            ota = agent.get("/health")["ota"]
            if ota["polls"] >= 1 and ota["notify_subscribed"]:
                break
            time.sleep(0.1)
        assert ota["polls"] == 1 and ota["notify_subscribed"] and ota["version"] is None, ota
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
    assert took < 20 and health["ota"]["version"] == "1.0.0" and health["ota"]["notifications"] >= 1
