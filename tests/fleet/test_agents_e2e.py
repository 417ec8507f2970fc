"""Three real agent processes, enrolled with `edgewise device enroll`, updated by a real fleet server."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
import time

import numpy as np

from edgewise.data import load_splits

from ..harness import ADMIN, AgentProc, free_port, wait_rollout


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
        while time.time() < deadline and any(a.get("/health")["ota"]["version"] != "1.1.0" for a in agents):
            time.sleep(0.2)
        second = [a.post("/predict", json.dumps({"inputs": x.tolist()}).encode()) for a in agents]
        health = [a.get("/health") for a in agents]
    finally:
        for a in agents:
            a.kill()
    # Assert: each agent answered with 1.0.0, then with 1.1.0, from its own verified slot
    assert [(s, b["version"]) for s, b in first] == [(200, "1.0.0")] * 3
    assert [(s, b["version"]) for s, b in second] == [(200, "1.1.0")] * 3
    assert all(h["ota"]["version"] == "1.1.0" and h["ota"]["active_slot"] in ("a", "b") for h in health)
    labels = {tuple(r["label"] for r in b["results"]) for _, b in second}
    assert len(labels) == 1 and np.all(np.isfinite([r["score"] for r in second[0][1]["results"]]))
    assert {d["version"] for d in fleet.admin.devices("lobby")} == {"1.1.0"}
