"""Flower's deployment engine: a SuperLink and SuperNodes as real processes, each SuperNode training on the
samples its agent keeps (`agent/samples.py`).

`edgewise federate serve` starts a SuperLink, writes a Flower App whose components are `server_app` and
`client_app` below (the run's configuration travels as Flower's run config), submits it with `flwr run` and
follows the rounds the ServerApp writes to `progress.jsonl`. `edgewise federate join` becomes a SuperNode
whose node config names the agent's sample store. Both run Flower's own executables from this Python
environment; the FAB carries no dependencies (nothing is installed at run time).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgewise.errors import FederatedError
from edgewise.federated.client import make_client_app
from edgewise.federated.config import ClientData, FedConfig
from edgewise.federated.server import run_rounds

CONNECTION = "edgewise"


# ------------------------------------------------------------------------ the apps the FAB points at


def _run_cfg(context: Any) -> FedConfig:
    return FedConfig.from_run_config(dict(context.run_config))


def _store_data(context: Any, cfg: FedConfig) -> tuple[int, ClientData, int]:
    from edgewise.agent.samples import SampleStore

    rc, nc = context.run_config, context.node_config
    if "store" not in nc:
        raise FederatedError("this SuperNode has no sample store: start it with `edgewise federate join --store`")
    store = SampleStore.open_existing(Path(str(nc["store"])))
    try:
        x, y = store.load(str(nc["model-name"]) if nc.get("model-name") else None)
    finally:
        store.close()
    shape = tuple(int(v) for v in str(rc["sample-shape"]).split(","))
    if tuple(x.shape[1:]) != shape:
        raise FederatedError(f"the samples in {nc['store']} have shape {list(x.shape[1:])}; the federation trains "
                            f"{cfg.model} on {list(shape)}")
    if y.max() >= int(rc["num-classes"]):
        raise FederatedError(f"a sample in {nc['store']} has label {y.max()}; the model has {rc['num-classes']} classes")
    # the node id (drawn by the SuperLink) keeps devices from shuffling their data alike
    return 0, ClientData([x], [y], shape, int(rc["num-classes"])), int(context.node_id) % 100


client_app = make_client_app(_run_cfg, _store_data)


def _server_main(grid: Any, context: Any) -> None:
    from edgewise.data import load_splits

    cfg = _run_cfg(context)
    splits = load_splits(cfg.data)  # the server's held-out test split evaluates each round's global model
    data = ClientData([], [], splits.test.sample_shape, splits.test.num_classes)
    run_rounds(grid, context, cfg, data, (splits.test.x, splits.test.y), Path(str(context.run_config["out-dir"])))


def _make_server_app() -> Any:
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(_server_main)
    return app


server_app = _make_server_app()


# ------------------------------------------------------------------------------- processes


def flower_env(home: Path) -> dict[str, str]:
    """Flower's executables start each other by name: put this environment's bin first on PATH."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home),
            "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederatedError(f"{what} exited with code {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FederatedError(f"{what} did not open {host}:{port} in {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path, n: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def write_app(app_dir: Path, cfg: FedConfig, extra: dict[str, Any]) -> Path:
    """A Flower App project (what `flwr run` packs into a FAB) whose components live in this package."""
    import tomli_w

    app_dir.mkdir(parents=True, exist_ok=True)
    config = {**cfg.to_run_config(), **extra}
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "edgewise-federated", "version": "1.0.0", "dependencies": [],
                    "description": "edgewise federated run (components installed with edgewise)"},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "edgewise",
                                  "components": {"serverapp": "edgewise.federated.deploy:server_app",
                                                 "clientapp": "edgewise.federated.deploy:client_app"},
                                  "config": config}}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project))
    return app_dir


def write_connection(home: Path, host: str, port: int, ca: Path | None) -> None:
    import tomli_w

    home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, Any] = {"address": f"{host}:{port}", "insecure": ca is None}
    if ca is not None:
        conn["root-certificates"] = str(ca)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_plaintext(host: str, insecure: bool, what: str) -> None:
    """Plain HTTP only where nobody else can listen: loopback, or when the user says so."""
    if not insecure and not is_loopback(host):
        raise FederatedError(f"{what} {host} is not loopback: use TLS (serve --tls-dir DIR; join --root-cert "
                            "DIR/ca.crt) or say --insecure to send weights in the clear")


def _exit_on_sigterm() -> None:
    """SIGTERM as an orderly exit, so `finally` blocks stop the child processes instead of orphaning them."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))


def node_auth_plan(host: str, tls: bool, node_keys: list[Path], any_node: bool) -> list[Path]:
    """The node public keys to register, checked; empty when any node may join. Outside loopback a node
    must hold a registered key unless the operator says `any_node`; Flower authenticates nodes over TLS only."""
    from edgewise.federated.nodeauth import public_keys

    if node_keys and any_node:
        raise FederatedError("--node-keys and --any-node contradict each other: choose one")
    if not node_keys:
        if not any_node and not is_loopback(host):
            raise FederatedError(f"the SuperLink would listen on {host}, where any machine could join and send "
                                "weights: register the devices' keys (--node-keys DIR of NAME.pub from `edgewise "
                                "federate node-key`) or say --any-node")
        return []
    if not tls:
        raise FederatedError("node authentication (--node-keys) needs TLS: add --tls-dir DIR")
    return public_keys(node_keys)


def _register_nodes(keys: list[Path], env: dict[str, str], cwd: Path, log: Path) -> None:
    for key in keys:
        with open(log, "ab") as f:
            r = subprocess.run(["flwr", "supernode", "register", str(key), CONNECTION], stdout=f,
                               stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=60, check=False)
        if r.returncode != 0:
            raise FederatedError(f"the SuperLink refused to register {key}: {_tail(log, 600)}")


def serve(cfg: FedConfig, out: Path, host: str = "127.0.0.1", port: int = 9092,
          on_round: Callable[[int, float, float], None] | None = None, start_timeout: float = 60.0,
          run_timeout: float | None = None, tls_dir: Path | None = None, insecure: bool = False,
          tls_names: tuple[str, ...] = (), node_keys: list[Path] | None = None,
          any_node: bool = False) -> dict[str, Any]:
    """Start a SuperLink on host:port, run `cfg.rounds` rounds once `cfg.clients` SuperNodes have joined,
    stop the SuperLink, and return the history (as `simulate.run` does). With `tls_dir`, every connection
    is TLS with the federation's certificates there (made on first use, see `tls.py`). With `node_keys`
    (public keys, or directories of them) only those nodes may join (`nodeauth.py`)."""
    if tls_dir is None:
        check_plaintext(host, insecure, "the SuperLink would listen on")
    _exit_on_sigterm()  # a service manager's stop still stops the SuperLink (the `finally` below runs)
    registered = node_auth_plan(host, tls_dir is not None, list(node_keys or []), any_node)
    from edgewise.data import load_splits
    from edgewise.federated.history import collect_history, fresh_run_dir, save_history

    with socket.socket() as probe:  # a taken port would let us "connect" to someone else's server
        try:
            probe.bind((host, port))
        except OSError as e:
            raise FederatedError(f"the SuperLink cannot listen on {host}:{port} ({e.strerror}): is another "
                                "federation running there? choose --port") from e
    if tls_dir is not None and Path(out).resolve() in Path(tls_dir).resolve().parents:
        raise FederatedError("keep --tls-dir outside --out: each run replaces its output directory")
    out = fresh_run_dir(out)
    test = load_splits(cfg.data).test
    home = out / "flower-home"
    tls = None
    if tls_dir is not None:
        from edgewise.federated.tls import ensure_certs

        tls = ensure_certs(Path(tls_dir).resolve(), [host, socket.gethostname(), *tls_names])
    write_connection(home, "127.0.0.1" if host in ("0.0.0.0", "::") else host, port, tls.ca if tls else None)
    app = write_app(out / "app", cfg, {"out-dir": str(out), "num-classes": test.num_classes,
                                       "sample-shape": ",".join(str(v) for v in test.sample_shape)})
    env = flower_env(home)
    link_log = out / "superlink.log"
    with open(link_log, "wb") as f:
        security = (["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
                    if tls else ["--insecure"])
        if registered:
            security.append("--enable-supernode-auth")
        link = subprocess.Popen(["flower-superlink", *security, "--disable-runtime-dependency-installation",
                                 "--host", host, "--port", str(port), "--database", str(home / "state.db")],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out)
    try:
        wait_port(host, port, link, start_timeout, "the SuperLink", link_log)
        _register_nodes(registered, env, out, out / "register.log")
        run_log = out / "flower.log"
        with open(run_log, "wb") as f:
            runner = subprocess.Popen(["flwr", "run", str(app), CONNECTION, "--stream"], stdout=f,
                                      stderr=subprocess.STDOUT, env=env, cwd=out)
        try:
            _follow(runner, out / "progress.jsonl", on_round, run_timeout, run_log)
        finally:
            _stop(runner)
        if link.poll() is not None:
            raise FederatedError(f"the SuperLink died during the run: {_tail(link_log)}")
    finally:
        _stop(link)  # on an interrupt too: no SuperLink is left holding the port
    history = collect_history(cfg, out)
    history["deployment"] = {"superlink": f"{host}:{port}", "tls": tls is not None,
                             "node_auth": len(registered),
                             "nodes": sorted({c["node"] for c in history["crossed"] if "node" in c})}
    save_history(history, out)
    return history


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _follow(runner: subprocess.Popen[bytes], progress: Path, on_round: Any, timeout: float | None,
            log: Path) -> None:
    """Wait for `flwr run --stream` to end, reporting each round the ServerApp finishes."""
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = runner.poll() is not None
        if progress.exists():
            lines = progress.read_text().split("\n")[:-1]  # the last piece may be a line still being written
            for line in lines[seen:]:
                if line.strip() and on_round is not None:
                    r = json.loads(line)
                    on_round(r["round"], r["accuracy"], r["loss"])
            seen = len(lines)
        if done:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise FederatedError(f"the federated run did not finish in {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.5)
    if runner.returncode != 0:
        raise FederatedError(f"`flwr run` failed with code {runner.returncode}: {_tail(log)}")


def seed(stores: list[Path], data: str, scheme: str, model_name: str, seed: int = 0) -> list[int]:
    """Fill each agent's sample store with one partition of a bundled dataset's training split (to try the
    deployment mode without collecting data first). Returns the samples each store received."""
    from edgewise.agent.samples import FILENAME, SampleStore
    from edgewise.data import load_splits
    from edgewise.federated.partition import partition

    train = load_splits(data).train
    if train.y is None:
        raise FederatedError(f"{data} has no labels to train on")
    sizes = []
    for path, idx in zip(stores, partition(train.y, len(stores), scheme, seed)):
        path = Path(path)
        store = SampleStore(path / FILENAME if path.suffix != ".db" else path)
        try:
            store.add(model_name, train.x[idx], train.y[idx])
        finally:
            store.close()
        sizes.append(len(idx))
    return sizes


def join_command(server: str, store: Path, model_name: str | None, api_port: int,
                 max_wait_s: float | None, root_cert: Path | None, node_key: Path | None = None) -> list[str]:
    node_config = f'store="{store}"' + (f' model-name="{model_name}"' if model_name else "")
    security = ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    cmd = ["flower-supernode", *security, "--superlink", server, "--port", str(api_port),
           "--node-config", node_config]
    if max_wait_s is not None:
        cmd += ["--max-wait-time", str(max_wait_s)]
    if node_key is not None:
        cmd += ["--auth-supernode-private-key", str(node_key)]
    return cmd


def join(server: str, store: Path, model_name: str | None = None, api_port: int = 0,
         max_wait_s: float | None = None, home: Path | None = None, root_cert: Path | None = None,
         insecure: bool = False, node_key: Path | None = None) -> None:
    """Become a SuperNode of the federation at `server` (HOST:PORT), training on the agent's store;
    with `root_cert` (the federation's ca.crt) over TLS, and with `node_key` signing as a registered
    node. Replaces this process (a service manager's stop
    signal reaches Flower's SuperNode directly)."""
    from edgewise.agent.samples import SampleStore
    from edgewise.hostport import parse_hostport

    host, _ = parse_hostport(server, "--server")
    if root_cert is None:
        check_plaintext(host, insecure, "the SuperLink at")
    elif not Path(root_cert).is_file():
        raise FederatedError(f"no CA certificate at {root_cert}")
    if node_key is not None:
        from edgewise.federated.nodeauth import check_private_key

        if root_cert is None:
            raise FederatedError("a node key (--node-key) is only sent over TLS: add --root-cert ca.crt")
        node_key = check_private_key(node_key)

    store = Path(store).resolve()
    s = SampleStore.open_existing(store)  # fail here, readably, rather than in every round
    try:
        x, _ = s.load(model_name)
    finally:
        s.close()
    store = s.path
    home = (home or store.parent / "flower").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cmd = join_command(server, store, model_name, api_port or free_port(), max_wait_s,
                       Path(root_cert).resolve() if root_cert else None, node_key)
    env = flower_env(home)
    print(f"joining {server} with {len(x)} local samples from {store}", flush=True)
    run_supernode(cmd, env, max_wait_s, node_key is not None)


def _supernode_once(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run Flower's SuperNode once, its output passed through; its exit code, and its API error lines
    (`[code: NNNN]`, wherever they came) followed by its last lines: under load its SuperExec child's
    traceback can follow the error line by a hundred lines. It runs in its own process group, which stop
    signals reach and which is killed when it ends: Flower's SuperNode leaves its SuperExec child behind."""
    import collections
    import signal
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    flagged: collections.deque[str] = collections.deque(maxlen=20)

    def forward(sig: int, _frame: Any) -> None:
        os.killpg(proc.pid, sig)

    def relay() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
            line = raw.decode(errors="replace")
            tail.append(line)
            if "[code: " in line:
                flagged.append(line)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        reader.join(10)
    return code, "".join(flagged) + "".join(tail)


def run_supernode(cmd: list[str], env: dict[str, str], max_wait_s: float | None, has_key: bool,
                  first_wait_s: float = 5.0) -> None:
    """Run Flower's SuperNode until it ends. A SuperLink that is not up yet, or does not know this node's key
    yet, refuses it (Flower says 2004 for both), and Flower's SuperNode then exits: a device may well start
    before the SuperLink or before the operator registers it, so retry with backoff (up to `max_wait_s`)
    instead of dying. A federation that admits only registered nodes, joined without a key, is an error
    said in one line."""
    deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
    wait = first_wait_s
    while True:
        code, said = _supernode_once(cmd, env)
        # Flower's exit codes are not what tells these apart (an activation refused may still exit 0): its
        # API error codes are. 2001: auth is on and this node has no key; 2004: not activated (unknown key, or no
        # SuperLink listening yet).
        if "code: 2001" in said and not has_key:
            raise FederatedError("this federation admits registered nodes only: make a key with `edgewise federate "
                                 "node-key`, have the operator register NAME.pub, and join with --node-key NAME.key")
        if "code: 2004" not in said:
            if code != 0:
                raise FederatedError(f"the SuperNode exited with code {code}")
            return
        if deadline is not None and time.monotonic() + wait > deadline:
            raise FederatedError("the SuperLink did not take this node within --max-wait: check that it is up, and "
                                 "that the operator registered NAME.pub (`federate serve --node-keys`)")
        print(f"the SuperLink did not take this node (not up yet, or its key not registered yet): retrying in "
              f"{wait:.0f} s", flush=True)
        time.sleep(wait)
        wait = min(wait * 2, 60.0)
