"""`edgewise federate`: a Flower simulation on this machine, with a centralized run of the same model
beside it, written to DIR/history.json and DIR/history.png."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import FederatedError
from edgewise.federated.client import make_client_app
from edgewise.federated.config import ClientData, FedConfig
from edgewise.federated.history import collect_history, fresh_run_dir, save_history, summary
from edgewise.federated.partition import partition
from edgewise.federated.server import make_server_app


def client_data(cfg: FedConfig) -> tuple[ClientData, Any, list[int]]:
    from edgewise.data import load_splits

    splits = load_splits(cfg.data)
    if splits.train.y is None:
        raise ValueError("federated training needs labels")
    parts = partition(splits.train.y, cfg.clients, cfg.partition, cfg.seed)
    data = ClientData([splits.train.x[p] for p in parts], [splits.train.y[p] for p in parts],
                      splits.train.sample_shape, splits.train.num_classes)
    return data, splits, [len(p) for p in parts]


def centralized(cfg: FedConfig, splits: Any) -> float:
    """The same model trained on all the data in one place, with the same optimizer and as many passes
    over the data as one client makes in the whole federation."""
    from edgewise.federated.config import build_module
    from edgewise.federated.task import accuracy, train_local

    data = ClientData([splits.train.x], [splits.train.y], splits.train.sample_shape, splits.train.num_classes)
    module = build_module(cfg, data)
    train_local(module, splits.train.x, splits.train.y, cfg.rounds * cfg.local_epochs, cfg.lr, seed=cfg.seed)
    return accuracy(module, splits.test.x, splits.test.y)[0]


ENGINES = ("ray", "local")


def run(cfg: FedConfig, out: Path, on_round: Any = None, baseline: bool = True,
        engine: str = "ray") -> dict[str, Any]:
    """Simulate `cfg` and write its history to `out`. `engine`: "ray" is Flower's simulation engine
    (clients in parallel, in Ray worker processes); "local" runs them one after another in this process
    (no Ray start-up; reproducible; see federated.localgrid)."""
    import logging

    if engine not in ENGINES:
        raise FederatedError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    out = fresh_run_dir(out)
    data, splits, sizes = client_data(cfg)
    server = make_server_app(cfg, data, (splits.test.x, splits.test.y), out, on_round)
    def share(ctx: Any, _cfg: FedConfig) -> tuple[int, ClientData, int]:
        pid = int(ctx.node_config.get("partition-id", 0))
        return pid, data, pid

    client = make_client_app(lambda _ctx: cfg, share)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    if engine == "local":
        from edgewise.federated.localgrid import run_local

        run_local(server, client, cfg.clients)
    else:
        _run_on_ray(server, client, cfg.clients)
    history = collect_history(cfg, out, sizes)
    if baseline:
        history["centralized_accuracy"] = centralized(cfg, splits)
    save_history(history, out)
    return history


def _run_on_ray(server: Any, client: Any, clients: int) -> None:
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's GPU notice
    run_simulation(server, client, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False,
                                                 "logging_level": "error"}})


__all__ = ["FedConfig", "run", "summary", "np"]
