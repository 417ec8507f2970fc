"""Signed bundles, a real fleet server process, and devices running the real updater."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from edgewise.agent.ota.slots import Slots
from edgewise.agent.ota.updater import Updater, enroll
from edgewise.bundle import read_bundle, write_bundle
from edgewise.bundle.selftest import add_golden
from edgewise.bundle.signing import TrustStore, generate_keys, load_private, load_public, sign_bundle
from edgewise.fleet.client import FleetClient

from ..agent.conftest import free_port, make_bundle, spawn_until_healthy

ADMIN = "test-admin-token"


def versioned(src: Path, out: Path, version: str, key: Path, model_bytes: bytes | None = None,
              golden_from: Path | None = None) -> Path:
    """A copy of bundle `src` as `version`, with golden pairs and signed by `key`. `model_bytes` swaps the
    model (hashes stay consistent: a well-formed bundle whose model is broken or different)."""
    m = read_bundle(src)
    write_bundle(out, replace(m, version=version, files={}, created=""),
                 {"model.onnx": model_bytes if model_bytes is not None else (src / "model.onnx").read_bytes()})
    if golden_from is not None:  # golden pairs of another model: the self-test must fail
        shutil.copy(golden_from / "selftest.npz", out / "selftest.npz")
        m2 = read_bundle(out)
        write_bundle(out, replace(m2, files={}), {"model.onnx": out / "model.onnx", "selftest.npz": out / "selftest.npz"})
    elif model_bytes is None:
        add_golden(out)
    sign_bundle(out, load_private(key))
    return out


@pytest.fixture(scope="session")
def fleet_kit(tmp_path_factory):
    """Keys and signed bundles: 1.0.0, 1.1.0 (good), and bad variants of 1.2.0."""
    root = tmp_path_factory.mktemp("fleet-kit")
    generate_keys(root / "keys", "release")
    generate_keys(root / "keys", "rogue")
    key, rogue = root / "keys" / "release.key", root / "keys" / "rogue.key"
    base = make_bundle(root / "m", "mlp", 2, "digits", 0.5)
    other = make_bundle(root / "m2", "mlp", 1, "digits", 0.25)
    b = {"1.0.0": versioned(base, root / "b100", "1.0.0", key), "1.1.0": versioned(base, root / "b110", "1.1.0", key)}
    b["noload"] = versioned(base, root / "bnoload", "1.2.0", key, model_bytes=b"not an onnx model at all")
    b["selftest"] = versioned(base, root / "bself", "1.3.0", key, model_bytes=(other / "model.onnx").read_bytes(),
                              golden_from=b["1.0.0"])
    b["rogue"] = versioned(base, root / "brogue", "1.4.0", rogue)
    return {"root": root, "key": key, "pub": root / "keys" / "release.pub", "rogue_pub": root / "keys" / "rogue.pub",
            "bundles": b}


class FleetProc:
    def __init__(self, data_dir: Path, trust: list[Path], port: int | None = None, db: str | None = None,
                 ttl: float = 3600, mqtt: str | None = None) -> None:
        self.data_dir, self.trust, self.port, self.db, self.ttl = data_dir, trust, port or free_port(), db, ttl
        self.mqtt = mqtt
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> FleetProc:
        args = [sys.executable, "-m", "edgewise.cli", "fleet", "serve", "--data-dir", str(self.data_dir),
                "--port", str(self.port), "--assignment-ttl", str(self.ttl)]
        for t in self.trust:
            args += ["--trust", str(t)]
        if self.db:
            args += ["--db", self.db]
        if self.mqtt:
            args += ["--mqtt", self.mqtt]
        self.proc = spawn_until_healthy(args, self.url, "fleet server", {**os.environ, "EDGEWISE_ADMIN_TOKEN": ADMIN},
                                        timeout=30)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def admin(self) -> FleetClient:
        return FleetClient(self.url, ADMIN)

    def fleet_keys(self) -> TrustStore:
        t = TrustStore()
        t.add(load_public(urllib.request.urlopen(self.url + "/v1/keys/fleet.pub", timeout=5).read()))
        return t


@pytest.fixture
def fleet(fleet_kit, tmp_path):
    f = FleetProc(tmp_path / "fleet", [fleet_kit["pub"], fleet_kit["rogue_pub"]]).start()
    yield f
    f.kill()


async def make_devices(fleet: FleetProc, kit: dict, root: Path, n: int, tag: str, client: httpx.AsyncClient,
                       **kw) -> list[Updater]:
    """n devices enrolled for real, each with its own slots, trusting only the release key."""
    token_tags = [tag]
    out = []
    for i in range(n):
        token = fleet.admin.enroll_token(token_tags)
        ident = await enroll(client, fleet.url, token, f"dev-{i}")
        out.append(Updater(ident, Slots(root / f"dev-{i}"), TrustStore.load([kit["pub"]]), fleet.fleet_keys(),
                           client, backoff_s=0.05, **kw))
    return out


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def wait_rollout(fleet: FleetProc, rid: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = fleet.admin.get_rollout(rid)
        if r["state"] in states:
            return r
        time.sleep(0.2)
    raise AssertionError(f"rollout {rid} stuck in {r['state']}: {json.dumps(r)}")
