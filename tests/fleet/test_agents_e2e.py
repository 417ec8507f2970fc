"""Real agent processes, enrolled with `edgewise device enroll`, updated by a real fleet server."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
import time

import numpy as np

from edgewise.data import load_splits

from ..harness import ADMIN, AgentProc, free_port, wait_rollout


def _version(health: dict, model: str = "digits") -> str | None:
    return health["ota"]["models"].get(model, {}).get("version")


@pytest.mark.e2e
def test_three_agents_take_two_rollouts_and_serve_each_new_model(fleet, fleet_kit, tmp_path):
    # Prepare: enrol three agents from the command line and start them polling the fleet
    fleet.admin.upload(fleet_kit["bundles"]["1.0.0"])
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
    agents = []
    for i in range(3):
        token = fleet.admin.enroll_token(["lobby"])
        subprocess.run([sys.executable, "-m", "edgewise.cli", "device", "enroll", "--token", token, "--name",
                        f"agent-{i}", "--server", fleet.url, "--data-dir", str(tmp_path / f"a{i}")],
                       check=True, capture_output=True, env={"EDGEWISE_ADMIN_TOKEN": ADMIN, "PATH": ""})
        agents.append(AgentProc(["--tier", "endpoint", "--fleet-poll", "0.3", "--trust", str(fleet_kit["pub"])],
                                free_port(), tmp_path / f"a{i}").start())
    x = load_splits("digits").test.x[:4]
    try:
        # Execute
        r1 = fleet.admin.rollout("digits", "1.0.0", "lobby", [34, 100])
        wait_rollout(fleet, r1["id"], ("completed",), timeout=60)
        first = [a.post("/predict", json.dumps({"inputs": x.tolist()}).encode()) for a in agents]
        r2 = fleet.admin.rollout("digits", "1.1.0", "lobby", [34, 67, 100])
        wait_rollout(fleet, r2["id"], ("completed",), timeout=60)
        deadline = time.time() + 10
        while time.time() < deadline and any(_version(a.get("/health")) != "1.1.0" for a in agents):
            time.sleep(0.2)
        second = [a.post("/predict", json.dumps({"inputs": x.tolist()}).encode()) for a in agents]
        health = [a.get("/health") for a in agents]
    finally:
        for a in agents:
            a.kill()
    # Assert: each agent answered with 1.0.0, then with 1.1.0, from its own verified slot
    assert [(s, b["version"]) for s, b in first] == [(200, "1.0.0")] * 3
    assert [(s, b["version"]) for s, b in second] == [(200, "1.1.0")] * 3
    assert all(h["ota"]["models"]["digits"]["version"] == "1.1.0" for h in health)
    assert all(h["ota"]["models"]["digits"]["active_slot"] in ("a", "b") for h in health)
    labels = {tuple(r["label"] for r in b["results"]) for _, b in second}
    assert len(labels) == 1 and np.all(np.isfinite([r["score"] for r in second[0][1]["results"]]))
    assert {d["models"]["digits"] for d in fleet.admin.devices("lobby")} == {"1.1.0"}


@pytest.mark.e2e
def test_an_agent_runs_two_models_from_two_rollouts_and_serves_both_after_a_restart(fleet, fleet_kit, tmp_path):
    # Prepare: one agent; two models in the registry, each with its own rollout running at the same time
    for b in ("1.0.0", "lite-2.0.0", "lite-2.1.0"):
        fleet.admin.upload(fleet_kit["bundles"][b])
    token = fleet.admin.enroll_token(["lobby"])
    subprocess.run([sys.executable, "-m", "edgewise.cli", "device", "enroll", "--token", token, "--server",
                    fleet.url, "--data-dir", str(tmp_path / "a")], check=True, capture_output=True)
    args = ["--tier", "endpoint", "--fleet-poll", "0.3", "--trust", str(fleet_kit["pub"])]
    agent = AgentProc(args, free_port(), tmp_path / "a").start()
    x = json.dumps({"inputs": load_splits("digits").test.x[:4].tolist()}).encode()
    try:
        # Execute: both rollouts; then the second model is rolled back by the operator; then a restart
        r1 = fleet.admin.rollout("digits", "1.0.0", "lobby", [100])
        r2 = fleet.admin.rollout("digits-lite", "2.0.0", "lobby", [100])
        for r in (r1, r2):
            wait_rollout(fleet, r["id"], ("completed",), timeout=60)
        both = {m: agent.post(f"/predict?model={m}", x) for m in ("digits", "digits-lite")}
        r3 = fleet.admin.rollout("digits-lite", "2.1.0", "lobby", [100])
        wait_rollout(fleet, r3["id"], ("completed",), timeout=60)
        newer = agent.post("/predict?model=digits-lite", x)
        fleet.admin.control(r3["id"], "rollback")
        deadline = time.time() + 20
        while time.time() < deadline and _version(agent.get("/health"), "digits-lite") != "2.0.0":
            time.sleep(0.2)
        agent.kill()
        agent = AgentProc(args, agent.port, tmp_path / "a").start()
        after = {m: agent.post(f"/predict?model={m}", x) for m in ("digits", "digits-lite")}
        health = agent.get("/health")
    finally:
        agent.kill()
    # Assert: each model answered at its own version; the rollback moved only digits-lite; both survive a restart
    assert {m: (s, b["version"]) for m, (s, b) in both.items()} == {"digits": (200, "1.0.0"),
                                                                    "digits-lite": (200, "2.0.0")}
    assert newer[0] == 200 and newer[1]["version"] == "2.1.0"
    assert {m: (s, b["version"]) for m, (s, b) in after.items()} == {"digits": (200, "1.0.0"),
                                                                     "digits-lite": (200, "2.0.0")}
    assert {m: v["version"] for m, v in health["ota"]["models"].items()} == {"digits": "1.0.0", "digits-lite": "2.0.0"}
    assert health["ota"]["recovered"] == {"digits": "ok", "digits-lite": "ok"}
    assert fleet.admin.devices("lobby")[0]["models"] == {"digits": "1.0.0", "digits-lite": "2.0.0"}
