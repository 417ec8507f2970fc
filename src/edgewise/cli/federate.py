"""Federated learning verbs: a simulation on this machine (no subcommand), or the deployment engine
(serve / join / seed) across real devices."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from edgewise.cli.common import Server, Token, out
from edgewise.errors import FederatedError

federate_app = typer.Typer(help="Federated learning on Flower: a simulation on this machine (no subcommand), or "
                                "the deployment engine (serve / join) across real devices.",
                           invoke_without_command=True)


# Two groups of options shared by the simulation and `serve`, written once: the training recipe (what
# FedConfig holds) and --publish (optimize, sign, upload and roll out the global model).
TRAINING: list[tuple[str, Any, Any]] = [
    ("model", Annotated[str, typer.Option(help="zoo architecture: mlp, cnn, dscnn, cnn1d")], "cnn"),
    ("data", Annotated[str, typer.Option(help="bundled dataset, e.g. digits (serve: its test split scores each "
                                              "round)")], "digits"),
    ("rounds", Annotated[int, typer.Option(help="federated rounds")], 10),
    ("strategy", Annotated[str, typer.Option(help="fedavg, fedprox, fedadam, or fedmedian / fedtrimmedavg (robust "
                                                  "to outlying updates)")], "fedavg"),
    ("fraction", Annotated[float, typer.Option(help="share of clients sampled each round")], 1.0),
    ("local_epochs", Annotated[int, typer.Option(help="local epochs per round")], 2),
    ("lr", Annotated[float, typer.Option(help="client learning rate (SGD, momentum 0.9)")], 0.05),
    ("mode", Annotated[str, typer.Option(help="'full' or 'last' (clients train only the classifier head)")], "full"),
    ("width", Annotated[float, typer.Option(help="model width multiplier")], 1.0),
    ("seed", Annotated[int, typer.Option(help="seed for partitions and training")], 0),
    ("dp_clip", Annotated[float, typer.Option(help="DP: clients clip their update to this L2 norm (0 = off)")], 0.0),
    ("dp_noise", Annotated[float, typer.Option(help="DP: Gaussian noise multiplier the server adds")], 0.0),
    ("secagg", Annotated[bool, typer.Option("--secagg", help="SecAgg+: the server learns only the sum of the "
                                                             "clients' masked updates (fedavg/fedprox, >= 3 "
                                                             "clients a round)")], False),
    ("eval_fraction", Annotated[float, typer.Option(help="share of clients that also score each round's model on "
                                                         "their own held-out samples (the newest --holdout share; "
                                                         "0 = off)")], 0.0),
    ("holdout", Annotated[float, typer.Option(help="with --eval-fraction: share of each client's samples kept out "
                                                   "of training to score on")], 0.2),
]


PUBLISHING: list[tuple[str, Any, Any]] = [
    ("publish", Annotated[bool, typer.Option("--publish", help="optimize the global model for --target, sign it "
                                                               "with --key, upload it and start a rollout to "
                                                               "--tag")], False),
    ("target", Annotated[str, typer.Option(help="--publish: device target profile")], "edge-node"),
    ("key", Annotated[Path | None, typer.Option(help="--publish: release private key")], None),
    ("tag", Annotated[str, typer.Option(help="--publish: devices to roll out to")], "all"),
    ("version", Annotated[str, typer.Option(help="--publish: bundle version")], "1.0.0"),
    ("server", Server, "http://127.0.0.1:8700"),
    ("token", Token, ""),
]


def _with_options(group: str, options: list[tuple[str, Any, Any]]) -> Callable[[Callable], Callable]:
    """Add `options` to a verb's signature (so typer shows them in --help) and hand them to it as one
    dict keyword, `group`."""
    names = [name for name, _, _ in options]

    def decorate(f: Callable) -> Callable:
        sig = inspect.signature(f, eval_str=True)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **{group: {n: kwargs.pop(n) for n in names}}, **kwargs)

        params = [p for p in sig.parameters.values() if p.name != group]
        at = next((i for i, p in enumerate(params) if p.name == "out_dir"), len(params))
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in options]
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*params[:at], *extra, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[at:])])
        del wrapper.__wrapped__  # typer must read the signature above, not f's
        wrapper.__annotations__ = {}
        return wrapper

    return decorate


FedOut = Annotated[Path, typer.Option("--out", "-o", help="history.json, history.png, global weights")]


def _print_round(rounds: int):  # type: ignore[no-untyped-def]
    def on_round(r: int, acc: float, loss: float) -> None:
        out.print(f"round {r:>3}/{rounds}: test accuracy {acc * 100:6.2f}%  loss {loss:.4f}")  # server's test split

    return on_round


def _check_publish(p: dict[str, Any]) -> None:
    if p["publish"] and p["key"] is None:
        raise FederatedError("--publish needs --key (the release private key that signs the bundle)")


def _publish_if_asked(h: dict, out_dir: Path, p: dict[str, Any]) -> None:
    if not p["publish"]:
        return
    from edgewise.federated.publish import publish as do_publish

    r = do_publish(h, out_dir, p["target"], p["key"], p["server"], p["token"], p["tag"], p["version"])
    out.print(f"published {r.model['name']} {r.model['version']} (signature {r.model['signature']}) from "
              f"{r.bundle}; rollout {r.rollout['id']} to {r.rollout['targeted']} device(s) tagged {p['tag']}")


@federate_app.callback()
@_with_options("publishing", PUBLISHING)
@_with_options("training", TRAINING)
def federate(
    ctx: typer.Context,
    training: dict[str, Any],
    publishing: dict[str, Any],
    clients: Annotated[int, typer.Option(help="simulated clients")] = 10,
    partition: Annotated[str, typer.Option(help="'iid' or 'dirichlet:ALPHA' label skew")] = "iid",
    engine: Annotated[str, typer.Option(help="'ray': Flower's simulation engine, clients in parallel; 'local': "
                                              "one after another in this process (no Ray start-up, "
                                              "reproducible)")] = "ray",
    out_dir: FedOut = Path("fl-out"),
) -> None:
    """Federated training on Flower's simulation engine, on this machine: per-round test accuracy beside a
    centralized run of the same model. Raw data stays in each client; only weights and metrics cross.

    Example: edgewise federate --model cnn --data digits --clients 20 --rounds 30 --partition dirichlet:0.5
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgewise.federated.config import FedConfig
    from edgewise.federated.history import summary
    from edgewise.federated.partition import parse_scheme
    from edgewise.federated.simulate import run

    parse_scheme(partition)
    _check_publish(publishing)
    cfg = FedConfig(clients=clients, partition=partition, **training)
    h = run(cfg, out_dir, _print_round(cfg.rounds), engine=engine)
    out.print(f"{summary(h)}; client sizes {min(h['client_sizes'])}-{max(h['client_sizes'])}; "
              f"wrote {out_dir / 'history.json'} and {out_dir / 'history.png'}")
    _publish_if_asked(h, out_dir, publishing)


@federate_app.command("serve")
@_with_options("publishing", PUBLISHING)
@_with_options("training", TRAINING)
def federate_serve(
    training: dict[str, Any],
    publishing: dict[str, Any],
    clients: Annotated[int, typer.Option(help="SuperNodes to wait for; each round trains on fraction of them")] = 3,
    round_timeout: Annotated[float, typer.Option(help="seconds a round waits for stragglers")] = 300.0,
    host: Annotated[str, typer.Option(help="address the SuperLink listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port (Fleet and Control APIs, HTTP)")] = 9092,
    tls_dir: Annotated[Path | None, typer.Option(help="TLS: the federation CA and SuperLink certificate live here "
                                                      "(made on first use); give devices DIR/ca.crt")] = None,
    tls_name: Annotated[list[str] | None, typer.Option(help="TLS: another name or IP devices reach the SuperLink "
                                                            "by (repeatable)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="plain HTTP on a non-loopback address")] = False,
    node_keys: Annotated[list[Path] | None, typer.Option(help="only nodes holding these keys may join: NAME.pub "
                                                              "files or directories of them, from `edgewise "
                                                              "federate node-key` (repeatable; needs --tls-dir)")]
    = None,
    any_node: Annotated[bool, typer.Option("--any-node", help="outside loopback, let nodes join without a "
                                                              "registered key")] = False,
    out_dir: FedOut = Path("fl-deploy"),
) -> None:
    """Run a federation on Flower's deployment engine: start a SuperLink, wait for --clients SuperNodes
    (`edgewise federate join` on each device), run the rounds, write DIR/history.json, stop.
    With --tls-dir every connection is TLS; without it only loopback is allowed (or --insecure).
    Outside loopback only registered nodes may join (--node-keys), unless --any-node.

    Example: edgewise federate serve --clients 3 --rounds 5 --tls-dir fl-tls --node-keys keys/ --out fl-deploy
    """
    from edgewise.federated.config import FedConfig
    from edgewise.federated.deploy import node_auth_plan, serve
    from edgewise.federated.history import summary

    _check_publish(publishing)
    keys = node_auth_plan(host, tls_dir is not None, list(node_keys or []), any_node)  # fail before printing
    cfg = FedConfig(clients=clients, partition="agent-stores", round_timeout_s=round_timeout, **training)
    ca = f" --root-cert {tls_dir / 'ca.crt'}" if tls_dir else ""
    nk = " --node-key NAME.key" if keys else ""
    out.print(f"SuperLink on {host}:{port}{' (TLS)' if tls_dir else ''}"
              f"{f', {len(keys)} registered node key(s)' if keys else ''}; waiting for {clients} SuperNode(s): "
              f"on each device run `edgewise federate join --server {host}:{port}{ca}{nk} --store AGENT_DATA_DIR`")
    h = serve(cfg, out_dir, host, port, _print_round(cfg.rounds), tls_dir=tls_dir, insecure=insecure,
              tls_names=tuple(tls_name or ()), node_keys=keys, any_node=any_node)
    out.print(f"{summary(h)}; {len(h['deployment']['nodes'])} SuperNodes took part; wrote {out_dir / 'history.json'}")
    _publish_if_asked(h, out_dir, publishing)


@federate_app.command("node-key")
def federate_node_key(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for NAME.key and NAME.pub")] = Path("."),
    name: Annotated[str, typer.Option(help="file name stem, e.g. the device's serial")] = "node",
) -> None:
    """Make this device's federation key pair: NAME.key stays here (mode 0600, given to `join --node-key`),
    NAME.pub goes to whoever runs `federate serve --node-keys`. Never replaces an existing key.

    Example: edgewise federate node-key --out /var/lib/edgewise --name dev-0042
    """
    from edgewise.federated.nodeauth import make_node_key

    k = make_node_key(out_dir, name)
    out.print(f"wrote {k.private} (keep it on this device) and {k.public} (register it with the federation)")


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
    node_key: Annotated[Path | None, typer.Option(help="this device's private key (from `federate node-key`), "
                                                       "when the federation registers nodes")] = None,
) -> None:
    """Join a federation as a Flower SuperNode that trains on the samples this device's agent keeps.
    Only weights and metrics leave the device. Runs until stopped.

    Example: edgewise federate join --server 10.0.0.5:9092 --root-cert ca.crt --store /var/lib/edgewise
    """
    from edgewise.federated.deploy import join

    join(server, store, model_name, max_wait_s=max_wait, root_cert=root_cert, insecure=insecure, node_key=node_key)


@federate_app.command("seed")
def federate_seed(
    store: Annotated[list[Path], typer.Option("--store", help="an agent's data dir (repeat for each device)")],
    data: Annotated[str, typer.Option(help="bundled dataset whose training split is dealt out")] = "digits",
    partition: Annotated[str, typer.Option(help="'iid' or 'dirichlet:ALPHA' label skew")] = "iid",
    model_name: Annotated[str, typer.Option(help="model name the samples are filed under")] = "cnn-digits",
    seed: Annotated[int, typer.Option(help="seed for the partition")] = 0,
) -> None:
    """Fill agents' sample stores with a partition of a bundled dataset, to try `serve`/`join` without
    collecting data first (agents normally gather samples through POST /v1/samples).

    Example: edgewise federate seed --store dev0 --store dev1 --store dev2 --partition dirichlet:0.5
    """
    from edgewise.federated.deploy import seed as do_seed

    sizes = do_seed(store, data, partition, model_name, seed)
    for path, n in zip(store, sizes):
        out.print(f"{path}: {n} samples of {data} for {model_name}")
