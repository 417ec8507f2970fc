"""What a federated run leaves behind: its output directory, history.json (rounds, what crossed, DP and
SecAgg+ terms) and its plot, and the one-line summary the CLI prints."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgewise.errors import FederatedError
from edgewise.federated.config import FedConfig

RUN_MARKERS = ("history.json", "rounds.json", "progress.jsonl", "crossed.jsonl")


def fresh_run_dir(out: Path) -> Path:
    """An empty output directory. An earlier run's directory is replaced; anything else that is not empty
    is refused rather than deleted (`--out .` must not wipe a working tree)."""
    out = Path(out).resolve()
    if out.exists():
        if not out.is_dir():
            raise FederatedError(f"--out {out} is a file")
        if any(out.iterdir()) and not any((out / m).exists() for m in RUN_MARKERS):
            raise FederatedError(f"--out {out} is not empty and holds no earlier federated run: choose a new "
                                "directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def collect_history(cfg: FedConfig, out: Path, sizes: list[int] | None = None) -> dict[str, Any]:
    """history.json's content from what the ServerApp wrote to `out` (rounds.json, crossed.jsonl)."""
    if not (out / "rounds.json").exists():
        log = out / "flower.log"
        raise FederatedError("the federated run ended without a result (see the Flower log "
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


