"""A federated run's configuration (Flower's run config travels as these fields), and the model and
data every client and the server start from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from edgewise.errors import FederatedError

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg")  # the last two resist outliers


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
    poison_clients: list[int] = field(default_factory=list)  # chaos: these send garbage weights (simulation)
    dp_clip: float = 0.0  # > 0: clients clip their update to this L2 norm (Flower's fixedclipping_mod) ...
    dp_noise: float = 0.0  # ... and the server adds Gaussian noise (multiplier z) to the unweighted average
    dp_delta: float = 1e-5
    eval_fraction: float = 0.0  # > 0: this share of clients also scores each round's model on its own samples
    holdout: float = 0.2  # ... on this newest share of its samples, which it then never trains on
    secagg: bool = False  # SecAgg+: the server learns only the sum of the clients' masked updates
    secagg_threshold: float = 0.5  # share of a client's key shares needed to unmask it if it drops out
    secagg_clip: float = 8.0  # quantizer range for each (weighted) update value: [-clip, clip]
    secagg_max_weight: float = 1000.0  # largest num-examples a client's update is weighted by
    # A client's update (its weights minus the round's global weights) larger than this many times the
    # round's median update norm is dropped and counted, as are non-finite or wrong-shaped ones. 0 = no
    # norm bound (finite values and shapes are always checked). Not applied under SecAgg+: the server
    # never sees one client's update there.
    max_update_ratio: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FederatedError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0 < self.fraction <= 1:
            raise FederatedError("fraction of clients per round must be in (0, 1]")
        if not 0 <= self.eval_fraction <= 1 or not 0 < self.holdout < 1:
            raise FederatedError("eval fraction must be in [0, 1] and the holdout share in (0, 1)")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise FederatedError("DP noise needs a clipping norm (--dp-clip)")
        if self.secagg:
            if self.strategy not in ("fedavg", "fedprox"):
                raise FederatedError("SecAgg+ is built here for the averaging strategies (fedavg, fedprox), "
                                    f"not {self.strategy}: the server sees only the sum, so it cannot take "
                                    "a median or trim outliers")
            if self.dp:
                raise FederatedError("SecAgg+ together with DP is not supported yet: choose one")
            if int(self.clients * self.fraction) < 3:
                raise FederatedError("SecAgg+ needs at least 3 clients a round (each key is split in shares)")
            if not 0 < self.secagg_threshold <= 1:
                raise FederatedError("the SecAgg+ reconstruction threshold is a share in (0, 1]")

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    @property
    def clients_per_round(self) -> int:
        return max(1, int(self.clients * self.fraction))

    @property
    def clients_evaluating(self) -> int:
        return max(1, int(self.clients * self.eval_fraction)) if self.eval_fraction > 0 else 0

    def to_run_config(self) -> dict[str, Any]:
        """Flower's run config (flat, hyphenated, scalar values): how the deployment engine carries it."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self) if f.name not in CHAOS}

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> FedConfig:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in rc and f.name not in CHAOS:
                default = getattr(cls(), f.name)
                kw[f.name] = type(default)(rc[key])
        return cls(**kw)


CHAOS = ("fail_clients", "poison_clients")  # test-only fields: never part of a deployed run's config


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


