"""Close the loop: the federated global model -> optimize for a target -> signed bundle -> fleet registry
-> rollout. One call from federated training to devices running the new model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import FederatedError


@dataclass
class Publication:
    bundle: Path
    model: dict[str, Any]
    rollout: dict[str, Any]


def publish(history: dict[str, Any], run_dir: Path, target: str, key: Path, server: str, token: str, tag: str,
            version: str, name: str | None = None, waves: tuple[float, ...] = (1, 10, 50, 100),
            torch_passes: bool = False) -> Publication:
    from edgewise.bundle import read_bundle, write_bundle
    from edgewise.bundle.selftest import add_golden
    from edgewise.bundle.signing import load_private, sign_bundle
    from edgewise.data import load_splits
    from edgewise.federated.config import ClientData, FedConfig, build_module
    from edgewise.federated.task import set_weights
    from edgewise.fleet.client import FleetClient
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainedModel

    private = load_private(key)  # fail before the slow part when the key is wrong
    client = FleetClient(server, token)
    cfg = FedConfig(**history["config"])
    splits = load_splits(cfg.data)
    ds = splits.train
    module = build_module(cfg, ClientData([], [], ds.sample_shape, ds.num_classes))
    with np.load(run_dir / "global_weights.npz") as w:
        set_weights(module, {k: w[k] for k in w.files})
    final = history["rounds"][-1]
    fed = {"rounds": cfg.rounds, "clients": cfg.clients, "strategy": cfg.strategy, "partition": cfg.partition,
           "test_accuracy": final["accuracy"], "dp": history.get("dp")}
    TrainedModel(cfg.model, cfg.width, ds.sample_shape, ds.labels, module, ds.preprocessing,
                 {"test_accuracy": final["accuracy"]}).save(run_dir / "global")
    outcome = optimize(run_dir / "global", cfg.data, load_target(target), run_dir / "optimized",
                       SearchOptions(torch_passes=torch_passes), name=name or f"{cfg.model}-{cfg.data}",
                       version=version)
    if outcome.bundle is None:
        raise FederatedError(f"nothing fits {target}: see {run_dir / 'optimized' / 'report.html'}")
    bundle = outcome.bundle
    m = read_bundle(bundle)
    write_bundle(bundle, replace(m, files={}, metrics={**m.metrics, "federated": fed},
                                 recipe=[{"pass": "federated", **{k: v for k, v in fed.items() if k != "dp"}},
                                         *m.recipe]),
                 {n: bundle / n for n in m.files})
    add_golden(bundle)
    sign_bundle(bundle, private)
    model = client.upload(bundle)
    rollout = client.rollout(model["name"], model["version"], tag, list(waves))
    return Publication(bundle, model, rollout)
