"""Flower ServerApp and ClientApp for the zoo's models (NumPy/torch weights in ArrayRecords).

The ServerApp runs the chosen strategy (FedAvg, FedProx or FedAdam) with per-round client sampling and a
round timeout (stragglers are dropped from the round, not waited for), evaluates the global model on the
held-out test split after every round, and records what each client reply carried: the record types and
keys, so a test can assert that only parameters and metrics crossed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.federated.task import accuracy, get_weights, set_weights, train_local

STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclass
class FedConfig:
    model: str = "cnn"
    width: float = 1.0
    data: str = "digits"
    clients: int = 10
    rounds: int = 10
    partition: str = "iid"
    strategy: str = "fedavg"
    fraction: float = 1.0  # clients sampled per round
    local_epochs: int = 2
    lr: float = 0.05
    mode: str = "full"  # or "last": clients train only the classifier head
    proximal_mu: float = 0.01  # FedProx only
    seed: int = 0
    round_timeout_s: float = 300.0
    fail_clients: list[int] = field(default_factory=list)  # chaos: these partitions crash from round 2 on
    dp_clip: float = 0.0  # > 0: clients clip their update to this L2 norm (Flower's fixedclipping_mod) ...
    dp_noise: float = 0.0  # ... and the server adds Gaussian noise (multiplier z) to the unweighted average
    dp_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EdgewiseError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0 < self.fraction <= 1:
            raise EdgewiseError("fraction of clients per round must be in (0, 1]")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise EdgewiseError("DP noise needs a clipping norm (--dp-clip)")

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0


@dataclass
class ClientData:
    x: list[np.ndarray]
    y: list[np.ndarray]
    shape: tuple[int, ...]
    classes: int


def build_module(cfg: FedConfig, data: ClientData) -> Any:
    import torch

    from edgewise.zoo import build

    torch.manual_seed(cfg.seed)
    return build(cfg.model, data.shape, data.classes, cfg.width)


def make_client_app(cfg: FedConfig, data: ClientData) -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    mods = []
    if cfg.dp:
        from flwr.clientapp.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)  # clips (new - global) to the norm the server sends, before it leaves
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config.get("partition-id", 0))
        round_ = int(msg.content["config"].get("server-round", 0))
        if pid in cfg.fail_clients and round_ >= 2:
            raise RuntimeError(f"client {pid} crashed (chaos)")
        module = build_module(cfg, data)
        set_weights(module, dict(zip(get_weights(module), msg.content["arrays"].to_numpy_ndarrays())))
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        loss = train_local(module, data.x[pid], data.y[pid], cfg.local_epochs, cfg.lr, mode=cfg.mode,
                           proximal_mu=mu, seed=cfg.seed * 1000 + round_ * 100 + pid)
        # What leaves the client: the new weights and two numbers. Never samples.
        metrics = {"train_loss": loss, "num-examples": len(data.y[pid])}
        if cfg.dp:  # DP averages clipped updates unweighted: its sensitivity bound assumes equal weights
            metrics["unit-weight"] = 1.0
        content = RecordDict({"arrays": ArrayRecord(numpy_ndarrays=list(get_weights(module).values())),
                              "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    return app


def make_server_app(cfg: FedConfig, data: ClientData, test: tuple[np.ndarray, np.ndarray], out: Path,
                    on_round: Any = None) -> Any:
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[cfg.strategy]
    crossed_path = out / "crossed.jsonl"

    class Recording(base):  # type: ignore[misc, valid-type]
        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            replies = list(replies)
            with open(crossed_path, "a") as f:
                for m in replies:
                    rec = {"round": server_round, "error": m.has_error()}
                    if not m.has_error():
                        rec["records"] = {k: [type(v).__name__, sorted(v.keys()),
                                              v.count_bytes() if hasattr(v, "count_bytes") else None]
                                          for k, v in m.content.items()}
                    f.write(json.dumps(rec) + "\n")
            return super().aggregate_train(server_round, replies)

    module = build_module(cfg, data)
    names = list(get_weights(module))
    n_min = max(1, int(cfg.clients * cfg.fraction))
    kw: dict[str, Any] = {"fraction_train": cfg.fraction, "fraction_evaluate": 0.0, "min_train_nodes": n_min,
                          "min_available_nodes": cfg.clients}
    if cfg.strategy == "fedprox":
        kw["proximal_mu"] = cfg.proximal_mu
    if cfg.strategy == "fedadam":
        kw.update(eta=0.01, eta_l=cfg.lr)
    if cfg.dp:
        kw["weighted_by_key"] = "unit-weight"
    strategy: Any = Recording(**kw)
    if cfg.dp:
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=cfg.dp_noise,
                                                              clipping_norm=cfg.dp_clip, num_sampled_clients=n_min)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(module, dict(zip(names, arrays.to_numpy_ndarrays())))
        acc, loss = accuracy(module, *test)
        if on_round is not None:
            on_round(server_round, acc, loss)
        return MetricRecord({"accuracy": acc, "loss": loss})

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(numpy_ndarrays=list(get_weights(module).values())),
                                num_rounds=cfg.rounds, timeout=cfg.round_timeout_s, evaluate_fn=evaluate,
                                train_config=ConfigRecord({"local-epochs": cfg.local_epochs}))
        final = dict(zip(names, result.arrays.to_numpy_ndarrays()))
        np.savez(out / "global_weights.npz", **final)
        hist = {int(r): dict(m) for r, m in result.evaluate_metrics_serverapp.items()}
        train = {int(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
        (out / "rounds.json").write_text(json.dumps({"evaluate": hist, "train": train, "config": asdict(cfg)}))

    return app
