"""Bundles for agent tests, and helpers to run agents as real processes on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgewise.bundle import Manifest, write_bundle
from edgewise.data import load_splits
from edgewise.modelio import inputs, outputs


def bundle_trained(train_dir: Path, out: Path, name: str, metrics: dict | None = None) -> Path:
    """Pack a `train` output directory as an fp32 bundle (as `optimize` would for a server)."""
    import onnx

    model = onnx.load(str(train_dir / "model.onnx"))
    meta = json.loads((train_dir / "train.json").read_text())
    manifest = Manifest(name, "1.0.0", "edge-server", [s.as_dict() for s in inputs(model)],
                        [s.as_dict() for s in outputs(model)], meta["labels"], meta["preprocessing"], "fp32", [],
                        metrics or {})
    return write_bundle(out, manifest, {"model.onnx": (train_dir / "model.onnx").read_bytes()})


def make_bundle(out: Path, arch: str, epochs: int, name: str, width: float = 1.0) -> Path:
    """A zoo model trained briefly on digits, packed as a bundle."""
    from edgewise.zoo import TrainConfig, train

    tm = train(arch, load_splits("digits"), TrainConfig(epochs=epochs), width=width)
    tm.save(out / "train")
    return bundle_trained(out / "train", out / "bundle", name, {"accuracy": tm.metrics["test_accuracy"]})


@pytest.fixture(scope="session")
def tier_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiers")
    return {"endpoint": make_bundle(root / "e", "mlp", 8, "digits", 0.5),
            "node": make_bundle(root / "n", "cnn", 3, "digits"),
            "server": make_bundle(root / "s", "cnn", 10, "digits")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_until_healthy(args: list[str], url: str, what: str, env: dict | None = None,
                        timeout: float = 60) -> subprocess.Popen:
    """Start a server process and return once its /health answers (or raise with its stderr)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


class AgentProc:
    def __init__(self, args: list[str], port: int, data_dir: Path) -> None:
        self.args, self.port, self.data_dir = args, port, data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProc:
        self.proc = spawn_until_healthy([sys.executable, "-m", "edgewise.cli", "agent", *self.args, "--port",
                                         str(self.port), "--data-dir", str(self.data_dir)], self.url, "agent")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str) -> dict:
        return json.loads(urllib.request.urlopen(self.url + path, timeout=10).read())

    def post(self, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def predict(agent: AgentProc, x: np.ndarray) -> list[dict]:
    status, body = agent.post("/predict", json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200, body
    return body["results"]


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")
