"""MQTT ingestion against a real Mosquitto broker (Debian package, started by the test)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgewise.data import load_splits

from ..harness import AgentProc, Broker, free_port, wait_for

BROKER = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
if BROKER is None and not os.environ.get("CI"):
    pytest.skip("mosquitto not installed (see .ci/run)", allow_module_level=True)

X = load_splits("digits").test.x


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(BROKER, tmp_path / "broker").start()
    yield b.port
    b.stop()


class Sensor:
    """A device-side client: publishes readings and collects what the agent publishes back."""

    def __init__(self, port: int, prefix: str) -> None:
        self.got: list[dict] = []
        self.errors: list[dict] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sensor-{port}")
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([(f"{prefix}/out/+", 1), (f"{prefix}/errors", 1)])
        self.c.loop_start()
        self.prefix = prefix
        time.sleep(0.3)

    def _msg(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            (self.errors if msg.topic.endswith("/errors") else self.got).append(json.loads(msg.payload))

    def publish(self, model: str, payload: bytes) -> None:
        self.c.publish(f"{self.prefix}/in/{model}", payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.e2e
def test_readings_in_results_out_malformed_answered_and_persistent_session(broker, tier_bundles, tmp_path):
    # Prepare
    args = ["--bundle", str(tier_bundles["node"]), "--tier", "node", "--mqtt", f"127.0.0.1:{broker}"]
    port = free_port()
    agent = AgentProc(args, port, tmp_path / "agent").start()
    sensor = Sensor(broker, "edgewise/node")
    try:
        # Execute: good readings, then malformed ones
        for i in range(5):
            sensor.publish("digits", json.dumps({"id": i, "inputs": X[i : i + 1].tolist()}).encode())
        for bad in (b"not json", json.dumps({"id": 99, "inputs": [[1, 2]]}).encode(), b'{"id": 7}'):
            sensor.publish("digits", bad)
        sensor.publish("no-such-model", json.dumps({"id": 5, "inputs": X[:1].tolist()}).encode())
        wait_for(lambda: len(sensor.got) == 5 and len(sensor.errors) == 4)
        # the agent goes away; readings published meanwhile wait in its persistent session
        agent.kill()
        for i in range(10, 13):
            sensor.publish("digits", json.dumps({"id": i, "inputs": X[i : i + 1].tolist()}).encode())
        agent.start()
        wait_for(lambda: len(sensor.got) == 8, timeout=30)
        health = agent.get("/health")
    finally:
        sensor.close()
        agent.kill()
    # Assert
    assert sorted(m["id"] for m in sensor.got) == [0, 1, 2, 3, 4, 10, 11, 12]
    assert all(m["results"][0]["tier"] == "node" for m in sensor.got)
    assert {e["id"] for e in sensor.errors} == {None, 99, 7, 5}
    assert any("expects [batch, 1, 8, 8]" in e["error"] for e in sensor.errors)
    assert health["mqtt"]["connected"] is True


@pytest.mark.e2e
def test_a_sensor_streams_readings_over_mqtt_and_none_are_lost_across_a_broker_restart(vibration_bundle, tmp_path):
    from edgewise.agent.runner import AgentConfig, build_agent

    broker = Broker(BROKER, tmp_path / "broker").start()
    agent = build_agent(AgentConfig(bundles=[vibration_bundle], tier="node", data_dir=tmp_path / "agent",
                                    mqtt=f"127.0.0.1:{broker.port}", mqtt_client_id="agent-under-test"))
    got: list[dict] = []
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pump-1", clean_session=False)
    dev.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    acked: list[int] = []
    dev.on_publish = lambda _c, _u, mid, _r, _p: acked.append(mid)
    dev.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("edgewise/node/out/autoencoder/pump-1", qos=1)
    dev.reconnect_delay_set(min_delay=1, max_delay=2)
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    wait_for(dev.is_connected)
    time.sleep(0.3)
    rows = np.random.default_rng(3).normal(0, 0.1, (8000, 3))
    try:
        for k in range(80):  # 8 s of readings in chunks of 100 (at 20x real time); the broker restarts half-way
            chunk = {"readings": rows[100 * k : 100 * (k + 1)].round(5).tolist(), "seq": 100 * k, "t0": 50 + k / 10}
            dev.publish("edgewise/node/readings/autoencoder/pump-1", json.dumps(chunk), qos=1)
            time.sleep(0.005)
            if k == 30:
                broker.stop()  # the sensor goes on publishing: its client queues until the broker is back
            if k == 50:
                broker.start()
        streams = agent.inference.sensors
        wait_for(lambda: streams.counts["samples"] == 8000 and len(got) > 0, timeout=60)
        wait_for(lambda: sum(len(m["windows"]) for m in got) == streams.counts["windows"], timeout=30)
    finally:
        dev.loop_stop()
        dev.disconnect()
        agent.close()
        broker.stop()
    c = streams.counts
    assert len(set(acked)) == 80  # the broker took every chunk (the ones sent while it was down, on its return)
    assert c["windows"] == (8000 - 1000) // 500 + 1 and c["gaps"] == 0 and c["late_samples"] == 0, c
    ends = sorted(w["ts"] for m in got for w in m["windows"])
    assert ends == pytest.approx([50 + (999 + 500 * k) / 1000 for k in range(15)], abs=1e-3)
