"""CLI verbs for keys, the fleet server and its admin API, device enrolment, and federated training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgewise.errors import EdgewiseError

out = Console()
keys_app = typer.Typer(help="Ed25519 signing keys: generate, endorse a successor (rotation).", no_args_is_help=True)
fleet_app = typer.Typer(help="The fleet server and its admin API: registry, devices, rollouts.", no_args_is_help=True)
device_app = typer.Typer(help="The device side of the fleet: enrolment.", no_args_is_help=True)

Server = Annotated[str, typer.Option(envvar="EDGEWISE_FLEET", help="fleet server URL")]
Token = Annotated[str, typer.Option(envvar="EDGEWISE_ADMIN_TOKEN", help="admin token (or $EDGEWISE_ADMIN_TOKEN)")]


def _client(server: str, token: str):  # type: ignore[no-untyped-def]
    from edgewise.fleet.client import FleetClient

    return FleetClient(server, token)


@keys_app.command("gen")
def keys_gen(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for NAME.key (private) and NAME.pub")],
    name: Annotated[str, typer.Option(help="file name stem")] = "release",
) -> None:
    """Generate an Ed25519 key pair (the private key is written with mode 0600; never overwritten).

    Example: edgewise keys gen --out keys
    """
    from edgewise.bundle.signing import generate_keys, key_id, load_public

    priv, pub = generate_keys(out_dir, name)
    out.print(f"wrote {priv} (keep secret) and {pub}; key id {key_id(load_public(pub))}")


@keys_app.command("endorse")
def keys_endorse(
    key: Annotated[Path, typer.Option("--key", "-k", help="the currently trusted private key")],
    new: Annotated[Path, typer.Option("--new", help="the successor's public key (.pub)")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="write NAME.endorsement.json here")],
) -> None:
    """Sign a new public key with the trusted one: devices holding the old key accept the new one once the
    endorsement sits in their trust directory (key rotation without re-flashing).

    Example: edgewise keys endorse --key keys/release.key --new keys2/release.pub --out trust/release2.endorsement.json
    """
    import json

    from edgewise.bundle.signing import endorse, load_private, load_public

    if not out_file.name.endswith(".endorsement.json"):
        raise EdgewiseError("--out must end in .endorsement.json")
    cert = endorse(load_private(key), load_public(new))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(cert, indent=2))
    out.print(f"wrote {out_file}: key {cert['key_id']} endorsed by {cert['endorsed_by']['key_id']}")


@fleet_app.command("serve")
def fleet_serve(
    data_dir: Annotated[Path, typer.Option(help="bundles, the fleet key and (by default) the SQLite database")] = Path("fleet-data"),
    db: Annotated[str | None, typer.Option(help="sqlite path or postgresql://user@host/db (default: DATA_DIR/fleet.db)")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="release public key(s) the registry accepts signatures from")] = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8700,
    assignment_ttl: Annotated[float, typer.Option(help="seconds before assignment metadata expires")] = 3600.0,
    mqtt: Annotated[str | None, typer.Option(help="MQTT broker HOST:PORT: notify devices of new assignments")] = None,
) -> None:
    """Run the fleet server: admin API (/v1/admin), device API (/v1/device), web console at /.

    Example: edgewise fleet serve --data-dir /var/lib/edgewise-fleet --trust keys/release.pub --port 8700
    """
    from edgewise.fleet.server import ServerConfig, _admin_token, serve

    cfg = ServerConfig(data_dir=data_dir, db=db, trust=list(trust or []), assignment_ttl_s=assignment_ttl, mqtt=mqtt)
    data_dir.mkdir(parents=True, exist_ok=True)
    where = "$EDGEWISE_ADMIN_TOKEN" if os.environ.get("EDGEWISE_ADMIN_TOKEN") else str(data_dir / "admin.token")
    _admin_token(cfg)
    out.print(f"edgewise fleet on http://{host}:{port} (console at /); admin token in {where}; "
              f"database {db or data_dir / 'fleet.db'}")
    serve(cfg, host, port)


@fleet_app.command("upload")
def fleet_upload(bundle: Annotated[Path, typer.Argument(help="signed bundle directory")], server: Server = "http://127.0.0.1:8700",
                 token: Token = "") -> None:
    """Upload a bundle to the registry (its signature status is checked and recorded).

    Example: edgewise fleet upload runs/cnn-mcu/bundle --server http://127.0.0.1:8700
    """
    m = _client(server, token).upload(bundle)
    out.print(f"uploaded {m['name']} {m['version']} ({m['size']:,} bytes), signature: {m['signature']}")


@fleet_app.command("enroll-token")
def fleet_enroll_token(tags: Annotated[list[str] | None, typer.Option("--tag", help="tag(s) the device gets")] = None,
                       server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """Make a one-time enrolment token for a device.

    Example: edgewise fleet enroll-token --tag cameras
    """
    out.print(_client(server, token).enroll_token(list(tags or [])))


@fleet_app.command("devices")
def fleet_devices(tag: Annotated[str | None, typer.Option(help="only devices with this tag")] = None,
                  server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """List enrolled devices with their model versions.

    Example: edgewise fleet devices --tag cameras
    """
    table = Table()
    for col in ("id", "name", "tags", "model", "version", "last step"):
        table.add_column(col)
    for d in _client(server, token).devices(tag):
        table.add_row(d["id"][:12], d["name"], ", ".join(d["tags"]), d["model"] or "", d["version"] or "", d["state"] or "")
    out.print(table)


@fleet_app.command("rollout")
def fleet_rollout(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="version in the registry")],
    tag: Annotated[str, typer.Option("--tag", help="devices with this tag")],
    waves: Annotated[str, typer.Option(help="cumulative percentages")] = "1,10,50,100",
    max_failure_rate: Annotated[float, typer.Option(help="health gate: failed share allowed")] = 0.0,
    max_error_rate: Annotated[float, typer.Option(help="health gate: mean error rate allowed")] = 0.05,
    wave_timeout: Annotated[float, typer.Option(help="seconds before silent devices count as failed")] = 600.0,
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="halt only; do not roll back a failed wave")] = False,
    server: Server = "http://127.0.0.1:8700", token: Token = "",
) -> None:
    """Start a rollout in waves with health gates between them.

    Example: edgewise fleet rollout cnn 1.1.0 --tag cameras --waves 1,10,50,100
    """
    try:
        w = [float(x) for x in waves.split(",")]
    except ValueError as e:
        raise EdgewiseError(f"--waves must be comma-separated percentages, got {waves!r}") from e
    r = _client(server, token).rollout(model, version, tag, w, {"max_failure_rate": max_failure_rate,
                                                               "max_error_rate": max_error_rate,
                                                               "wave_timeout_s": wave_timeout}, not no_rollback)
    out.print(f"rollout {r['id']}: {model} {version} to {r['targeted']} device(s) tagged {tag}, state {r['state']}")


@fleet_app.command("rollouts")
def fleet_rollouts(server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """List rollouts with their state, wave and device counts.

    Example: edgewise fleet rollouts
    """
    table = Table()
    for col in ("id", "model", "version", "tag", "state", "wave", "devices", "reason"):
        table.add_column(col, overflow="fold")
    for r in _client(server, token).rollouts():
        table.add_row(r["id"], r["model"], r["version"], r["selector"], r["state"], f"{r['wave'] + 1}/{len(r['waves'])}",
                      ", ".join(f"{k} {v}" for k, v in r["devices"].items()), r["reason"])
    out.print(table)


@fleet_app.command("control")
def fleet_control(rollout_id: Annotated[str, typer.Argument(help="rollout id")],
                  action: Annotated[str, typer.Argument(help="pause, resume, abort or rollback")],
                  server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """Pause, resume, abort or roll back a rollout by hand.

    Example: edgewise fleet control 3f9a1c2b7d4e pause
    """
    r = _client(server, token).control(rollout_id, action)
    out.print(f"rollout {r['id']}: {r['state']}")


@device_app.command("enroll")
def device_enroll(
    enroll_token: Annotated[str, typer.Option("--token", help="one-time token from `fleet enroll-token`")],
    data_dir: Annotated[Path, typer.Option(help="the agent's data directory")] = Path("agent-data"),
    name: Annotated[str, typer.Option(help="device name shown in the fleet")] = "",
    fleet_key: Annotated[Path | None, typer.Option(help="the fleet's public key, provisioned out of band (default: "
                                                     "fetched from the server at enrolment and pinned)")] = None,
    server: Server = "http://127.0.0.1:8700",
) -> None:
    """Enrol this device: trade the token for a device credential, kept in DATA_DIR/ota/device.json (0600).

    Example: edgewise device enroll --token XYZ --server http://fleet:8700 --data-dir /var/lib/edgewise
    """
    from edgewise.agent.ota.thread import enroll_device

    ident = enroll_device(server, enroll_token, data_dir, name, fleet_key)
    out.print(f"enrolled as {ident.device_id}; credential in {data_dir / 'ota' / 'device.json'}")


federate_app = typer.Typer(help="Federated learning on Flower: a simulation on this machine (no subcommand), or "
                                "the deployment engine (serve / join) across real devices.",
                           invoke_without_command=True)

FedModel = Annotated[str, typer.Option(help="zoo architecture: mlp, cnn, dscnn, cnn1d")]
FedData = Annotated[str, typer.Option(help="bundled dataset, e.g. digits (serve: its test split scores each round)")]
Rounds = Annotated[int, typer.Option(help="federated rounds")]
Strategy = Annotated[str, typer.Option(help="fedavg, fedprox, fedadam, or fedmedian / fedtrimmedavg (robust to "
                                            "outlying updates)")]
Fraction = Annotated[float, typer.Option(help="share of clients sampled each round")]
LocalEpochs = Annotated[int, typer.Option(help="local epochs per round")]
Lr = Annotated[float, typer.Option(help="client learning rate (SGD, momentum 0.9)")]
Mode = Annotated[str, typer.Option(help="'full' or 'last' (clients train only the classifier head)")]
Width = Annotated[float, typer.Option(help="model width multiplier")]
Seed = Annotated[int, typer.Option(help="seed for partitions and training")]
DpClip = Annotated[float, typer.Option(help="DP: clients clip their update to this L2 norm (0 = off)")]
DpNoise = Annotated[float, typer.Option(help="DP: Gaussian noise multiplier the server adds")]
EvalFraction = Annotated[float, typer.Option(help="share of clients that also score each round's model on their "
                                                "own held-out samples (the newest --holdout share; 0 = off)")]
Holdout = Annotated[float, typer.Option(help="with --eval-fraction: share of each client's samples kept out of "
                                             "training to score on")]
SecAgg = Annotated[bool, typer.Option("--secagg", help="SecAgg+: the server learns only the sum of the clients' "
                                                       "masked updates (fedavg/fedprox, >= 3 clients a round)")]
Publish = Annotated[bool, typer.Option("--publish", help="optimize the global model for --target, sign it with "
                                                         "--key, upload it and start a rollout to --tag")]
PubTarget = Annotated[str, typer.Option(help="--publish: device target profile")]
PubKey = Annotated[Path | None, typer.Option(help="--publish: release private key")]
PubTag = Annotated[str, typer.Option(help="--publish: devices to roll out to")]
PubVersion = Annotated[str, typer.Option(help="--publish: bundle version")]
FedOut = Annotated[Path, typer.Option("--out", "-o", help="history.json, history.png, global weights")]


def _print_round(rounds: int):  # type: ignore[no-untyped-def]
    def on_round(r: int, acc: float, loss: float) -> None:
        out.print(f"round {r:>3}/{rounds}: test accuracy {acc * 100:6.2f}%  loss {loss:.4f}")  # server's test split

    return on_round


def _publish_if_asked(h: dict, out_dir: Path, publish: bool, target: str, key: Path | None, server: str,
                      token: str, tag: str, version: str) -> None:
    if not publish or key is None:
        return
    from edgewise.federated.publish import publish as do_publish

    p = do_publish(h, out_dir, target, key, server, token, tag, version)
    out.print(f"published {p.model['name']} {p.model['version']} (signature {p.model['signature']}) from "
              f"{p.bundle}; rollout {p.rollout['id']} to {p.rollout['targeted']} device(s) tagged {tag}")


@federate_app.callback()
def federate(
    ctx: typer.Context,
    model: FedModel = "cnn",
    data: FedData = "digits",
    clients: Annotated[int, typer.Option(help="simulated clients")] = 10,
    rounds: Rounds = 10,
    partition: Annotated[str, typer.Option(help="'iid' or 'dirichlet:ALPHA' label skew")] = "iid",
    strategy: Strategy = "fedavg",
    fraction: Fraction = 1.0,
    local_epochs: LocalEpochs = 2,
    lr: Lr = 0.05,
    mode: Mode = "full",
    width: Width = 1.0,
    seed: Seed = 0,
    dp_clip: DpClip = 0.0,
    dp_noise: DpNoise = 0.0,
    secagg: SecAgg = False,
    eval_fraction: EvalFraction = 0.0,
    holdout: Holdout = 0.2,
    publish: Publish = False,
    target: PubTarget = "edge-node",
    key: PubKey = None,
    tag: PubTag = "all",
    version: PubVersion = "1.0.0",
    server: Server = "http://127.0.0.1:8700",
    token: Token = "",
    out_dir: FedOut = Path("fl-out"),
) -> None:
    """Federated training on Flower's simulation engine, on this machine: per-round test accuracy beside a
    centralized run of the same model. Raw data stays in each client; only weights and metrics cross.

    Example: edgewise federate --model cnn --data digits --clients 20 --rounds 30 --partition dirichlet:0.5
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgewise.federated.apps import FedConfig
    from edgewise.federated.partition import parse_scheme
    from edgewise.federated.simulate import run, summary

    parse_scheme(partition)
    if publish and key is None:
        raise EdgewiseError("--publish needs --key (the release private key that signs the bundle)")
    cfg = FedConfig(model=model, width=width, data=data, clients=clients, rounds=rounds, partition=partition,
                    strategy=strategy, fraction=fraction, local_epochs=local_epochs, lr=lr, mode=mode, seed=seed,
                    dp_clip=dp_clip, dp_noise=dp_noise, secagg=secagg, eval_fraction=eval_fraction, holdout=holdout)
    h = run(cfg, out_dir, _print_round(rounds))
    out.print(f"{summary(h)}; client sizes {min(h['client_sizes'])}-{max(h['client_sizes'])}; "
              f"wrote {out_dir / 'history.json'} and {out_dir / 'history.png'}")
    _publish_if_asked(h, out_dir, publish, target, key, server, token, tag, version)


@federate_app.command("serve")
def federate_serve(
    clients: Annotated[int, typer.Option(help="SuperNodes to wait for; each round trains on fraction of them")] = 3,
    model: FedModel = "cnn",
    data: FedData = "digits",
    rounds: Rounds = 10,
    strategy: Strategy = "fedavg",
    fraction: Fraction = 1.0,
    local_epochs: LocalEpochs = 2,
    lr: Lr = 0.05,
    mode: Mode = "full",
    width: Width = 1.0,
    seed: Seed = 0,
    dp_clip: DpClip = 0.0,
    dp_noise: DpNoise = 0.0,
    secagg: SecAgg = False,
    eval_fraction: EvalFraction = 0.0,
    holdout: Holdout = 0.2,
    round_timeout: Annotated[float, typer.Option(help="seconds a round waits for stragglers")] = 300.0,
    host: Annotated[str, typer.Option(help="address the SuperLink listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port (Fleet and Control APIs, HTTP)")] = 9092,
    tls_dir: Annotated[Path | None, typer.Option(help="TLS: the federation CA and SuperLink certificate live here "
                                                      "(made on first use); give devices DIR/ca.crt")] = None,
    tls_name: Annotated[list[str] | None, typer.Option(help="TLS: another name or IP devices reach the SuperLink "
                                                            "by (repeatable)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="plain HTTP on a non-loopback address")] = False,
    publish: Publish = False,
    target: PubTarget = "edge-node",
    key: PubKey = None,
    tag: PubTag = "all",
    version: PubVersion = "1.0.0",
    server: Server = "http://127.0.0.1:8700",
    token: Token = "",
    out_dir: FedOut = Path("fl-deploy"),
) -> None:
    """Run a federation on Flower's deployment engine: start a SuperLink, wait for --clients SuperNodes
    (`edgewise federate join` on each device), run the rounds, write DIR/history.json, stop.
    With --tls-dir every connection is TLS; without it only loopback is allowed (or --insecure).

    Example: edgewise federate serve --clients 3 --rounds 5 --port 9092 --tls-dir fl-tls --out fl-deploy
    """
    from edgewise.federated.apps import FedConfig
    from edgewise.federated.deploy import serve
    from edgewise.federated.simulate import summary

    if publish and key is None:
        raise EdgewiseError("--publish needs --key (the release private key that signs the bundle)")
    cfg = FedConfig(model=model, width=width, data=data, clients=clients, rounds=rounds, partition="agent-stores",
                    strategy=strategy, fraction=fraction, local_epochs=local_epochs, lr=lr, mode=mode, seed=seed,
                    dp_clip=dp_clip, dp_noise=dp_noise, secagg=secagg, eval_fraction=eval_fraction, holdout=holdout,
                    round_timeout_s=round_timeout)
    ca = f" --root-cert {tls_dir / 'ca.crt'}" if tls_dir else ""
    out.print(f"SuperLink on {host}:{port}{' (TLS)' if tls_dir else ''}; waiting for {clients} SuperNode(s): on each "
              f"device run `edgewise federate join --server {host}:{port}{ca} --store AGENT_DATA_DIR`")
    h = serve(cfg, out_dir, host, port, _print_round(rounds), tls_dir=tls_dir, insecure=insecure,
              tls_names=tuple(tls_name or ()))
    out.print(f"{summary(h)}; {len(h['deployment']['nodes'])} SuperNodes took part; wrote {out_dir / 'history.json'}")
    _publish_if_asked(h, out_dir, publish, target, key, server, token, tag, version)


@federate_app.command("join")
def federate_join(
    server: Annotated[str, typer.Option(help="the SuperLink, HOST:PORT")] = "127.0.0.1:9092",
    store: Annotated[Path, typer.Option(help="the agent's data dir (or its samples.db): the local training data")]
    = Path("agent-data"),
    model_name: Annotated[str | None, typer.Option(help="which model's samples, when the store holds several")] = None,
    max_wait: Annotated[float | None, typer.Option(help="give up after this many seconds without the SuperLink "
                                                        "(default: keep trying)")] = None,
    root_cert: Annotated[Path | None, typer.Option(help="TLS: the federation's ca.crt (from serve --tls-dir)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="plain HTTP to a non-loopback SuperLink")] = False,
) -> None:
    """Join a federation as a Flower SuperNode that trains on the samples this device's agent keeps.
    Only weights and metrics leave the device. Runs until stopped.

    Example: edgewise federate join --server 10.0.0.5:9092 --root-cert ca.crt --store /var/lib/edgewise
    """
    from edgewise.federated.deploy import join

    join(server, store, model_name, max_wait_s=max_wait, root_cert=root_cert, insecure=insecure)


@federate_app.command("seed")
def federate_seed(
    store: Annotated[list[Path], typer.Option("--store", help="an agent's data dir (repeat for each device)")],
    data: Annotated[str, typer.Option(help="bundled dataset whose training split is dealt out")] = "digits",
    partition: Annotated[str, typer.Option(help="'iid' or 'dirichlet:ALPHA' label skew")] = "iid",
    model_name: Annotated[str, typer.Option(help="model name the samples are filed under")] = "cnn-digits",
    seed: Seed = 0,
) -> None:
    """Fill agents' sample stores with a partition of a bundled dataset, to try `serve`/`join` without
    collecting data first (agents normally gather samples through POST /v1/samples).

    Example: edgewise federate seed --store dev0 --store dev1 --store dev2 --partition dirichlet:0.5
    """
    from edgewise.federated.deploy import seed as do_seed

    sizes = do_seed(store, data, partition, model_name, seed)
    for path, n in zip(store, sizes):
        out.print(f"{path}: {n} samples of {data} for {model_name}")
