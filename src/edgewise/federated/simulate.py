"""`edgewise federate`: a Flower simulation on this machine, with a centralized run of the same model
beside it, written to DIR/history.json and DIR/history.png."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.federated.apps import ClientData, FedConfig, make_client_app, make_server_app
from edgewise.federated.partition import partition


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
    from edgewise.federated.apps import build_module
    from edgewise.federated.task import accuracy, train_local

    data = ClientData([splits.train.x], [splits.train.y], splits.train.sample_shape, splits.train.num_classes)
    module = build_module(cfg, data)
    train_local(module, splits.train.x, splits.train.y, cfg.rounds * cfg.local_epochs, cfg.lr, seed=cfg.seed)
    return accuracy(module, splits.test.x, splits.test.y)[0]


RUN_MARKERS = ("history.json", "rounds.json", "progress.jsonl", "crossed.jsonl")


def fresh_run_dir(out: Path) -> Path:
    """An empty output directory. An earlier run's directory is replaced; anything else that is not empty
    is refused rather than deleted (`--out .` must not wipe a working tree)."""
    out = Path(out).resolve()
    if out.exists():
        if not out.is_dir():
            raise EdgewiseError(f"--out {out} is a file")
        if any(out.iterdir()) and not any((out / m).exists() for m in RUN_MARKERS):
            raise EdgewiseError(f"--out {out} is not empty and holds no earlier federated run: choose a new "
                                "directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def run(cfg: FedConfig, out: Path, on_round: Any = None, baseline: bool = True) -> dict[str, Any]:
    import logging

    from flwr.simulation import run_simulation

    out = fresh_run_dir(out)
    data, splits, sizes = client_data(cfg)
    server = make_server_app(cfg, data, (splits.test.x, splits.test.y), out, on_round)
    def share(ctx: Any, _cfg: FedConfig) -> tuple[int, ClientData, int]:
        pid = int(ctx.node_config.get("partition-id", 0))
        return pid, data, pid

    client = make_client_app(lambda _ctx: cfg, share)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's GPU notice
    run_simulation(server, client, num_supernodes=cfg.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False,
                                                 "logging_level": "error"}})
    history = collect_history(cfg, out, sizes)
    if baseline:
        history["centralized_accuracy"] = centralized(cfg, splits)
    save_history(history, out)
    return history


def collect_history(cfg: FedConfig, out: Path, sizes: list[int] | None = None) -> dict[str, Any]:
    """history.json's content from what the ServerApp wrote to `out` (rounds.json, crossed.jsonl)."""
    if not (out / "rounds.json").exists():
        log = out / "flower.log"
        raise EdgewiseError("the federated run ended without a result (see the Flower log "
                            + (f"in {log})" if log.exists() else "above)"))
    rounds = json.loads((out / "rounds.json").read_text())
    evals = {int(k): v for k, v in rounds["evaluate"].items()}
    history: dict[str, Any] = {
        "config": asdict(cfg), "client_sizes": sizes or [],
        "rounds": [{"round": r, "accuracy": evals[r]["accuracy"], "loss": evals[r]["loss"],
                    **{k: evals[r][k] for k in ("device_accuracy", "device_loss") if k in evals[r]},
                    **({"train_loss": rounds["train"][str(r)].get("train_loss")} if str(r) in rounds["train"] else {})}
                   for r in sorted(evals) if "accuracy" in evals[r]],
        "crossed": [json.loads(line) for line in (out / "crossed.jsonl").read_text().splitlines()]
        if (out / "crossed.jsonl").exists() else [],
        "dropped_updates": rounds.get("dropped", [])}
    if cfg.dp:
        from edgewise.federated.dp import epsilon

        history["dp"] = {"clipping_norm": cfg.dp_clip, "noise_multiplier": cfg.dp_noise,
                         "clients_per_round": cfg.clients_per_round, "rounds": cfg.rounds,
                         "delta": cfg.dp_delta, "epsilon": epsilon(cfg.dp_noise, cfg.rounds, cfg.dp_delta),
                         "guarantee": "client-level (add/remove one client), Gaussian mechanism, RDP accounting, "
                                      "no amplification by sampling claimed"}
    if cfg.secagg:
        history["secagg"] = {"protocol": "SecAgg+ (Flower SecAggPlusWorkflow)", "reconstruction_threshold":
                             cfg.secagg_threshold, "clipping_range": cfg.secagg_clip,
                             "max_weight": cfg.secagg_max_weight}
    return history


def save_history(history: dict[str, Any], out: Path) -> None:
    """What every federated run leaves: DIR/history.json and its plot, DIR/history.png."""
    (out / "history.json").write_text(json.dumps(history, indent=2))
    plot(history, out / "history.png")


def plot(history: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in history["rounds"]]
    acc = [r["accuracy"] * 100 for r in history["rounds"]]
    cfg = history["config"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(rounds, acc, marker="o", label=f"{cfg['strategy']} ({cfg['clients']} clients, {cfg['partition']})")
    if "centralized_accuracy" in history:
        ax.axhline(history["centralized_accuracy"] * 100, color="gray", linestyle="--", label="centralized")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg['model']} on {cfg['data']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(history: dict[str, Any]) -> str:
    last = history["rounds"][-1]
    c = history.get("centralized_accuracy")
    dp = history.get("dp")
    return (f"round {last['round']}: accuracy {last['accuracy'] * 100:.2f}%"
            + (f" (centralized {c * 100:.2f}%, {(c - last['accuracy']) * 100:+.2f} points)" if c is not None else "")
            + (f"; on the devices' own held-out samples {last['device_accuracy'] * 100:.2f}%"
               if "device_accuracy" in last else "")
            + (f"; DP: epsilon {dp['epsilon']:.2f} at delta {dp['delta']:g} (client-level)" if dp else ""))


__all__ = ["FedConfig", "run", "summary", "np"]
