"""What tests (and benchmarks) share: bundles made the way users make them, real agent and fleet server
processes on loopback, signed bundle variants, and the C build-and-run helpers. Fixtures live in the
conftest files and call these; nothing imports a conftest."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgewise.agent.ota.slots import SlotSet
from edgewise.agent.ota.updater import Updater, enroll
from edgewise.bundle import Manifest, read_bundle, write_bundle
from edgewise.bundle.selftest import add_golden
from edgewise.bundle.signing import TrustStore, load_private, load_public, sign_bundle
from edgewise.data import load_splits
from edgewise.fleet.client import FleetClient
from edgewise.modelio import inputs, outputs

# ---- the edgewise command ----------------------------------------------------------------------------------

CLI_ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}


def ew_process(*args: str, cwd: Path | None = None, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """`edgewise ARGS` in its own process, as a user runs it (in a terminal `columns` wide)."""
    return subprocess.run([sys.executable, "-m", "edgewise.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**CLI_ENV, "COLUMNS": str(columns)})


def ew(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`edgewise ARGS` run by the same entry point (`edgewise.cli.main`: its error handling, exit codes and
    output) in this process, so a test does not pay for a cold interpreter and torch import each time.
    stdout and stderr are captured apart, as from a process."""
    import contextlib

    from edgewise.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_env, saved_cwd = sys.argv, dict(os.environ), os.getcwd()
    code = 0
    try:
        sys.argv = ["edgewise", *args]
        os.environ["COLUMNS"] = CLI_ENV["COLUMNS"]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["edgewise", *args], code, stdout.getvalue(), stderr.getvalue())


def assert_clean_failure(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit code 1 and one `error:` line that says `fragment`; never a traceback."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert fragment in proc.stderr, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


# ---- processes on loopback ---------------------------------------------------------------------------------

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


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


# ---- PostgreSQL ---------------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def start_postgres() -> tuple[str, Any]:
    """A real PostgreSQL server on a free loopback port: (its URL, a function that stops it and removes its
    files). FileNotFoundError when the server binaries are not installed."""
    import pwd
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="edgewise-pg-"))  # not under pytest's 0700 root-owned tree
    data, port = root / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pwd.getpwnam("postgres")
            user = "postgres"
        except KeyError:
            user = "nobody"
        shutil.chown(root, user)
        as_user = ["runuser", "-u", user, "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "edgewise", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://edgewise@127.0.0.1:{port}/postgres", stop


NGINX_CONF = """
worker_processes 1;
{user}
error_log {root}/error.log info;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
    log_format short '$request_method $uri $status $body_bytes_sent';
    access_log {root}/access.log short;
    sendfile on;
    upstream fleet {{ server 127.0.0.1:{fleet_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location /bundles/ {{ alias {models}/; }}
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


class Nginx:
    """Debian's nginx in front of a fleet server: the API proxied to it, and `/bundles/` served by nginx
    itself (sendfile, Range, ETag) from the fleet's DATA_DIR/models."""

    def __init__(self, fleet_port: int, models: Path) -> None:
        import tempfile

        self.binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if self.binary is None:
            raise FileNotFoundError("nginx")
        self.root = Path(tempfile.mkdtemp(prefix="edgewise-nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.root / "nginx.conf").write_text(NGINX_CONF.format(
            root=self.root, port=self.port, fleet_port=fleet_port, models=models,
            user="user root;" if os.geteuid() == 0 else ""))  # as root, its workers would not read pytest's 0700 dirs
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        self.proc = spawn_until_healthy([self.binary, "-p", str(self.root), "-c", str(self.root / "nginx.conf"),
                                         "-g", "daemon off;"], self.url, "nginx")
        return self

    def access_log(self) -> list[list[str]]:
        """Requests nginx answered: [method, path, status, bytes]."""
        return [line.split() for line in (self.root / "access.log").read_text().splitlines()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


# ---- fixtures built once per test run -----------------------------------------------------------------------

def shared(factory, name: str, build):  # type: ignore[no-untyped-def]
    """What `build(directory)` returns (a Path, or a dict of Paths and plain values), built once per test run
    rather than once per pytest-xdist worker: the first worker to ask builds it under a lock in the run's
    common temp dir; the others wait and reuse it. Tests must treat it as read-only, as they already do."""
    from filelock import FileLock

    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            if d.exists():  # a worker that died halfway
                shutil.rmtree(d)
            d.mkdir(parents=True)
            done.write_text(json.dumps(_encode(build(d), d)))
    return _decode(json.loads(done.read_text()), d)


def _encode(v, d: Path):  # type: ignore[no-untyped-def]
    if isinstance(v, Path):
        return {"__path__": str(v.relative_to(d))}
    if isinstance(v, dict):
        return {k: _encode(x, d) for k, x in v.items()}
    return v


def _decode(v, d: Path):  # type: ignore[no-untyped-def]
    if isinstance(v, dict):
        return d / v["__path__"] if set(v) == {"__path__"} else {k: _decode(x, d) for k, x in v.items()}
    return v


# ---- bundles -----------------------------------------------------------------------------------------------

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


MCU_OPTS = dict(latency_runs=5, measure_memory=False, calibration_samples=64, torch_passes=False)


def mcu_bundle(tmp: Path, arch: str, data: str, epochs: int, only: str = "baseline-int8-minmax",
               features: str | None = None, min_steps: int = 0) -> Path:
    """The search picks among `only`; the tolerance is wide because these fixtures test the compiler
    (BasicMotions' 16-sample validation split moves 6.25 points per sample)."""
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    cfg = TrainConfig(epochs=epochs, min_steps=min_steps)  # 0: the library's floor (series train >= 1,000 steps)
    train(arch, load_splits(data), cfg, features=features).save(tmp / "train")
    opts = SearchOptions(**MCU_OPTS, only=(only,), max_accuracy_drop=20.0)
    outcome = optimize(tmp / "train", data, load_target("mcu-256k"), tmp / "opt", opts)
    assert outcome.bundle is not None, outcome.result.why
    return outcome.bundle


def versioned(src: Path, out: Path, version: str, key: Path, model_bytes: bytes | None = None,
              golden_from: Path | None = None, name: str | None = None) -> Path:
    """A copy of bundle `src` as `version` (and model `name`), with golden pairs and signed by `key`.
    `model_bytes` swaps the model (hashes stay consistent: a well-formed bundle whose model is broken or
    different)."""
    m = read_bundle(src)
    write_bundle(out, replace(m, version=version, files={}, created="", name=name or m.name),
                 {"model.onnx": model_bytes if model_bytes is not None else (src / "model.onnx").read_bytes()})
    if golden_from is not None:  # golden pairs of another model: the self-test must fail
        shutil.copy(golden_from / "selftest.npz", out / "selftest.npz")
        m2 = read_bundle(out)
        write_bundle(out, replace(m2, files={}), {"model.onnx": out / "model.onnx", "selftest.npz": out / "selftest.npz"})
    elif model_bytes is None:
        add_golden(out)
    sign_bundle(out, load_private(key))
    return out


# ---- the agent ---------------------------------------------------------------------------------------------

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


# ---- the fleet ---------------------------------------------------------------------------------------------

ADMIN = "test-admin-token"


class FleetProc:
    def __init__(self, data_dir: Path, trust: list[Path], port: int | None = None, db: str | None = None,
                 ttl: float = 3600, mqtt: str | None = None, workers: int | None = None,
                 bundle_url: str | None = None, extra: list[str] | None = None) -> None:
        self.data_dir, self.trust, self.port, self.ttl = data_dir, trust, port or free_port(), ttl
        self.bundle_url, self.extra = bundle_url, list(extra or [])
        # EDGEWISE_TEST_FLEET_WORKERS=N runs every fleet server of the suite as N workers on PostgreSQL
        self.workers = workers or int(os.environ.get("EDGEWISE_TEST_FLEET_WORKERS", "1"))
        self.db = db or fresh_test_database()
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
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        if self.bundle_url:
            args += ["--bundle-url", self.bundle_url]
        args += self.extra
        self.proc = spawn_until_healthy(args, self.url, "fleet server", {**os.environ, "EDGEWISE_ADMIN_TOKEN": ADMIN},
                                        timeout=30)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.workers > 1:  # the supervisor stops its workers on SIGTERM
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                    return
                except subprocess.TimeoutExpired:
                    pass
            self.proc.kill()
            self.proc.wait()

    def health_by_worker(self, tries: int = 60) -> dict[int, dict]:
        """Each worker's /health, by pid (a new connection lands on whichever worker accepts it, so ask until
        every worker has answered)."""
        seen: dict[int, dict] = {}
        for _ in range(tries):
            req = urllib.request.Request(self.url + "/health", headers={"Connection": "close"})
            h = json.loads(urllib.request.urlopen(req, timeout=10).read())
            seen[h["pid"]] = h
            if len(seen) >= max(1, self.workers):
                break
        return seen

    def worker_pids(self) -> list[int]:
        """The worker processes of a `--workers N` server (children of the supervisor)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    @property
    def admin(self) -> FleetClient:
        return FleetClient(self.url, ADMIN)

    def fleet_keys(self) -> TrustStore:
        t = TrustStore()
        t.add(load_public(urllib.request.urlopen(self.url + "/v1/keys/fleet.pub", timeout=5).read()))
        return t


    def client(self) -> httpx.AsyncClient:
        """What a device talks to this server through."""
        return httpx.AsyncClient()

    def tick(self) -> None:
        """A real server advances rollouts on its own ticker (every second)."""


def fresh_test_database() -> str | None:
    """A new database on the suite's PostgreSQL server when EDGEWISE_TEST_FLEET_DB names one, else None."""
    server = os.environ.get("EDGEWISE_TEST_FLEET_DB")
    if not server:
        return None
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


class FakeClock:
    """Time that moves only when a test says so (the fleet store's `clock`)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FleetInProc:
    """The fleet server's app in this process, on a fake clock: devices reach it through httpx's ASGI
    transport, the admin through Starlette's TestClient, and rollouts advance when the test ticks them
    (the background ticker is parked), so a wave timeout takes no waiting and nothing depends on timing."""

    def __init__(self, data_dir: Path, trust: list[Path], ttl: float = 3600, bundle_url: str | None = None) -> None:
        from starlette.testclient import TestClient

        from edgewise.fleet.server import ServerConfig, build_store, create_app

        self.data_dir, self.url, self.clock = data_dir, "http://fleet.test", FakeClock()
        cfg = ServerConfig(data_dir=data_dir, trust=trust, admin_token=ADMIN, assignment_ttl_s=ttl, tick_s=1e9,
                           db=fresh_test_database(), bundle_url=bundle_url)
        self.store = build_store(cfg)
        self.store.clock = self.clock
        self.app = create_app(cfg, self.store)
        self.http = TestClient(self.app, base_url=self.url)  # any request, as from outside

    def start(self) -> FleetInProc:
        return self

    def kill(self) -> None:  # the parked ticker is a daemon thread waiting on a 1e9 s timer
        self.http.close()

    @property
    def admin(self) -> FleetClient:
        return FleetClient(self.url, ADMIN, http=self.http)

    def fleet_keys(self) -> TrustStore:
        t = TrustStore()
        t.add(load_public(self.http.get("/v1/keys/fleet.pub").content))
        return t

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.url)

    def tick(self) -> None:
        self.store.tick_all()


async def make_devices(fleet: FleetProc, kit: dict, root: Path, n: int, tag: str, client: httpx.AsyncClient,
                       **kw) -> list[Updater]:
    """n devices enrolled for real, each with its own slots, trusting only the release key."""
    token_tags = [tag]
    out = []
    for i in range(n):
        token = fleet.admin.enroll_token(token_tags)
        ident = await enroll(client, fleet.url, token, f"dev-{i}")
        out.append(Updater(ident, SlotSet(root / f"dev-{i}"), TrustStore.load([kit["pub"]]), fleet.fleet_keys(),
                           client, backoff_s=0.05, **kw))
    return out


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def wait_rollout(fleet: FleetProc, rid: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        fleet.tick()
        r = fleet.admin.get_rollout(rid)
        if r["state"] in states:
            return r
        time.sleep(0.2)
    raise AssertionError(f"rollout {rid} stuck in {r['state']}: {json.dumps(r)}")


# ---- generated C -------------------------------------------------------------------------------------------

def build_host(src: dict[str, str], out: Path) -> Path:
    """Write the sources and build them as the toolchain does: gcc -std=c99 -Wall -Wextra -Werror -O2."""
    from edgewise.codegen.toolchain import build_host as toolchain_build

    out.mkdir(parents=True, exist_ok=True)
    for name, text in src.items():
        (out / name).write_text(text)
    return toolchain_build(out, out / "model")


def run_program(exe: Path, samples: np.ndarray) -> np.ndarray:
    proc = subprocess.run([str(exe)], input=np.ascontiguousarray(samples, dtype=np.int8).tobytes(),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().strip().splitlines()
    return np.array([[int(v) for v in line.split("|")[0].split()] for line in lines])


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# ---- audio ---------------------------------------------------------------------------------------------
def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        x = np.repeat(x[:, None], channels, 1).reshape(-1)
        if width == 1:
            data = (x * 127 + 128).round().astype(np.uint8).tobytes()
        elif width == 3:
            v = (x * (2**23 - 1)).round().astype(np.int32)
            data = np.stack([v & 255, v >> 8 & 255, v >> 16 & 255], 1).astype(np.uint8).tobytes()
        else:
            data = (x * (2 ** (8 * width - 1) - 1)).round().astype(f"<i{width}").tobytes()
        w.writeframes(data)
    return buf.getvalue()


def tone_folder(root: Path, n: int = 24) -> Path:
    """Three classes of 'sounds' (tones at 500, 1500 and 3000 Hz, random phase, level and noise), recorded
    at different rates, as a user's WAV folder would hold."""
    rng = np.random.default_rng(0)
    for name, freq in (("low", 500), ("mid", 1500), ("high", 3000)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            rate = [8000, 16000, 44100][i % 3]
            x = tone(freq * rng.uniform(0.97, 1.03), rate, rng.uniform(0.4, 1.0), rng.uniform(0.1, 0.8))
            x = np.clip(x + rng.normal(0, 0.02, len(x)).astype(np.float32), -1, 1)
            (root / name / f"clip{i:03d}.wav").write_bytes(wav_bytes(x, rate))
    return root


TONE_FREQS = {"low": 500, "mid": 1500, "high": 3000}


def tone_keyword_bundle(root: Path) -> Path:
    """An int8 'keyword' model for mcu-256k trained on `tone_folder` (classes low / mid / high), its bundle
    declaring the audio front end, made the way users make one: train, then optimize."""
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    data = str(tone_folder(root / "sounds"))
    train("cnn", load_splits(data), TrainConfig(epochs=6, min_steps=150), width=0.5).save(root / "t")
    out = optimize(root / "t", data, load_target("mcu-256k"), root / "o",
                   SearchOptions(torch_passes=False, only=("baseline-int8-minmax",), measure_memory=False,
                                 latency_runs=5, max_accuracy_drop=20))
    assert out.bundle is not None, out.result.why
    return out.bundle


def tone_clips(labels: list[str], per_class: int = 8, seed: int = 9) -> tuple[np.ndarray, list[int]]:
    """Fresh 1 s, 16 kHz int16 recordings of each tone class, and their class indices."""
    rng = np.random.default_rng(seed)
    pcm, truth = [], []
    for k, name in enumerate(labels):
        for _ in range(per_class):
            x = np.zeros(16000, np.float32)
            t = tone(TONE_FREQS[name] * rng.uniform(0.97, 1.03), 16000, rng.uniform(0.5, 1.0), rng.uniform(0.1, 0.8))
            start = (len(x) - len(t)) // 2
            x[start : start + len(t)] = t
            pcm.append(np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16))
            truth.append(k)
    return np.stack(pcm), truth


def tone_recording(order: list[str], seed: int = 4) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """One 16 kHz int16 recording: a tone 'word' of each name in `order`, 1.5 s apart, over faint noise,
    and (name, second it ends)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.002, int(16000 * (1.5 * len(order) + 1.0))).astype(np.float32)
    said = []
    for i, name in enumerate(order):
        t = tone(TONE_FREQS[name] * rng.uniform(0.98, 1.02), 16000, 0.6, rng.uniform(0.3, 0.7))
        start = int(16000 * (0.5 + 1.5 * i))
        x[start : start + len(t)] += t
        said.append((name, (start + len(t)) / 16000))
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16), said


def set_keyword_spotting(bundle: Path, settings: dict) -> Path:
    """Rewrite `bundle` in place so its manifest sets postprocessing.keyword_spotting, as a user's
    `--preprocess` TOML would."""
    m = read_bundle(bundle)
    write_bundle(bundle, replace(m, files={}, postprocessing={**m.postprocessing, "keyword_spotting": settings}),
                 {n: bundle / n for n in m.files})
    return bundle


# ---- sensor logs -------------------------------------------------------------------------------------
ACTIVITIES = {"idle": (0.05, 0.0), "walk": (0.6, 2.0), "shake": (1.5, 7.0)}  # noise level, motion frequency


def sensor_log_csv(path: Path, seconds_per_segment: int = 24, rate: int = 50, seed: int = 0,
                   gap_at: int | None = None, nan_row: int | None = None, iso: bool = False) -> Path:
    """timestamp (ms, jittered), ax, ay, az, label: activities in turn, as a logger writes them."""
    rng = np.random.default_rng(seed)
    lines = ["timestamp,ax,ay,az,label"]
    t = 1_700_000_000_000.0  # epoch milliseconds
    order = ["idle", "walk", "shake", "walk", "idle", "shake"] * 2
    for name in order:
        noise, freq = ACTIVITIES[name]
        for _ in range(seconds_per_segment * rate):
            s = t / 1000
            ax = np.sin(2 * np.pi * freq * s) * (noise > 0.1) + rng.normal(0, noise)
            ay = np.cos(2 * np.pi * freq * s) * 0.5 * (noise > 0.1) + rng.normal(0, noise)
            az = 1.0 + rng.normal(0, noise)
            stamp = (__import__("datetime").datetime.fromtimestamp(t / 1000).isoformat() if iso else f"{t:.1f}")
            lines.append(f"{stamp},{ax:.4f},{ay:.4f},{az:.4f},{name}")
            t += 1000 / rate + rng.normal(0, 0.5)
            if gap_at is not None and len(lines) == gap_at:
                t += 5000
    if nan_row is not None:
        parts = lines[nan_row].split(",")
        parts[2] = "nan"
        lines[nan_row] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return path


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Broker:
    """A Mosquitto that keeps sessions and queued messages on disk, so it can be restarted mid-test."""

    def __init__(self, exe: str, root: Path, extra: str = "") -> None:
        self.exe, self.port, self.root = exe, free_port(), root
        root.mkdir(parents=True, exist_ok=True)
        # `user`: run as root, mosquitto would switch to the mosquitto user, which cannot write in our temp dir
        (root / "mosquitto.conf").write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                                             f"user {getpass.getuser()}\n"
                                             f"persistence_location {root}/\nautosave_interval 1\n"
                                             # a backlog for a slow subscriber is kept, not dropped past 1,000
                                             "max_queued_messages 1000000\n" + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.root / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: _listening(self.port), timeout=10)
        return self

    def stop(self) -> None:  # SIGTERM: mosquitto writes its sessions and queues to disk first
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
