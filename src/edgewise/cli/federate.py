"""Federated learning verbs: a simulation on this machine (no subcommand), or the deployment engine
(serve / join / seed) across real devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgewise.errors import EdgewiseError
from edgewise.cli.common import (out, Server, Token)


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
