"""What privacy costs in federated learning, and the deployment engine beside the simulation engine.

1. Digits CNN, 20 clients, Dirichlet 0.5, FedAvg: no privacy option vs SecAgg+ vs central DP at several noise
   multipliers: final accuracy, client-level epsilon, bytes each client sends a round, time.
2. The same small federation (3 clients, digits, Dirichlet 0.5) on the simulation engine and on the
   deployment engine (a SuperLink and three SuperNode processes over loopback, each reading an agent sample
   store), with and without SecAgg+: seconds per round side by side.

Run: .venv/bin/python benchmarks/bench_federated_privacy.py [--quick]
(writes the 'federated-privacy' section of RESULTS.md)
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, table, write_section  # noqa: E402

from edgewise.federated import deploy  # noqa: E402
from edgewise.federated.config import FedConfig  # noqa: E402
from edgewise.federated.simulate import run  # noqa: E402


def upload_bytes(h: dict) -> float:
    """Bytes in the replies a client sent, per client per round (every SecAgg+ stage included)."""
    replies = [c for c in h["crossed"] if not c["error"]]
    total = sum(r[2] for c in replies for r in c["records"].values())
    cfg = h["config"]
    return total / (cfg["clients"] * cfg["fraction"] * cfg["rounds"])


def privacy(rounds: int, tmp: Path) -> list[list[str]]:
    base = dict(model="cnn", clients=20, rounds=rounds, partition="dirichlet:0.5", local_epochs=2, lr=0.05)
    runs = [("none", {}), ("SecAgg+", {"secagg": True})]
    runs += [("DP C=4, clipping only", {"dp_clip": 4.0})]
    runs += [(f"DP C=4, z={z}", {"dp_clip": 4.0, "dp_noise": z}) for z in (0.1, 0.3, 1.0)]
    rows, plain_time = [], None
    for label, extra in runs:
        t = time.perf_counter()
        h = run(FedConfig(**base, **extra), tmp / label.replace(" ", "_").replace(",", ""), baseline=False)
        took = time.perf_counter() - t
        plain_time = plain_time or took
        acc = [r["accuracy"] for r in h["rounds"]]
        eps = h.get("dp", {}).get("epsilon")
        rows.append([label, f"{acc[-1] * 100:.2f}%", f"{max(acc) * 100:.2f}%",
                     "-" if eps is None else ("inf" if math.isinf(eps) else f"{eps:.1f}"),
                     f"{upload_bytes(h) / 1024:,.1f} KB", f"{took:.0f} s", f"{took / plain_time:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def engines(rounds: int, tmp: Path) -> list[list[str]]:
    rows = []
    for secagg in (False, True):
        cfg = FedConfig(model="cnn", clients=3, rounds=rounds, partition="dirichlet:0.5", secagg=secagg)
        t = time.perf_counter()
        sim = run(cfg, tmp / f"sim-{secagg}", baseline=False)
        sim_s = time.perf_counter() - t
        stores = [tmp / f"dev{i}-{secagg}" for i in range(3)]
        deploy.seed(stores, "digits", "dirichlet:0.5", "cnn-digits")  # the simulation's partitions
        port = deploy.free_port()
        joins = [subprocess.Popen([sys.executable, "-m", "edgewise.cli", "federate", "join", "--server",
                                   f"127.0.0.1:{port}", "--store", str(s)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for s in stores]
        stamps: list[float] = []
        t = time.perf_counter()
        try:
            dep = deploy.serve(cfg, tmp / f"deploy-{secagg}", port=port,
                               on_round=lambda *_: stamps.append(time.perf_counter()))
        finally:
            for j in joins:
                j.terminate()
                j.wait(30)
        dep_s = time.perf_counter() - t
        per_round = (stamps[-1] - stamps[0]) / rounds  # after round 0's evaluation: nodes joined, app started
        sim_acc, dep_acc = sim["rounds"][-1]["accuracy"], dep["rounds"][-1]["accuracy"]
        rows.append(["SecAgg+" if secagg else "none", f"{sim_s / (rounds + 1):.1f} s", f"{per_round:.1f} s",
                     f"{per_round / (sim_s / (rounds + 1)):.1f}x", f"{dep_s - per_round * rounds:.0f} s",
                     f"{sim_acc * 100:.2f}% / {dep_acc * 100:.2f}%"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args()
    rounds = 5 if args.quick else 30
    tmp = Path(tempfile.mkdtemp(prefix="edgewise-flp-"))
    p = privacy(rounds, tmp)
    e = engines(2 if args.quick else 3, tmp)
    md = (f"## Federated learning: privacy options and the deployment engine\n\nMachine: {machine()}.\n\n"
          f"Digits, zoo CNN (24k parameters), 20 clients, Dirichlet 0.5, FedAvg, {rounds} rounds, every client "
          "each round, 2 local epochs. DP: clients clip their update to L2 norm C (Flower's fixedclipping_mod), "
          "the server averages unweighted and adds Gaussian noise of std z*C/20. C = 4 is about the norm of one "
          "client's first-round update (BatchNorm running statistics included: they are part of the released "
          "model, so they are clipped and noised too; measured 1.9-3.4 of it, the weights 0.3-0.7). Epsilon is client-level at "
          "delta 1e-5 over all rounds (RDP, no sampling amplification). Upload: bytes in the replies one "
          "client sends a round (all four SecAgg+ stages counted). Time relative to the run without privacy.\n\n"
          + table(["privacy", "final accuracy", "best round", "epsilon", "upload / client / round", "time",
                   "vs none"], p)
          + "\n\nThe same federation of 3 clients (digits, Dirichlet 0.5, zoo CNN) on the two engines: the "
            "simulation engine (Ray, one process) and the deployment engine (a SuperLink and three SuperNode "
            "processes over loopback, each SuperNode reading an agent sample store filled with the same "
            "partition). Per round: simulation = whole run / (rounds + 1); deployment = time between the "
            "ServerApp's first and last evaluation / rounds. Startup: the deployment run's time outside the "
            "rounds (SuperLink start, `flwr run`, ServerApp process, nodes joining, shutdown). Same data; "
            "the accuracies differ because deployed clients seed their local shuffles from their node ids.\n\n"
          + table(["privacy", "simulation / round", "deployment / round", "deployment vs simulation",
                   "deployment startup", "final accuracy sim / deploy"], e) + "\n")
    print(md)
    write_section("federated-privacy", md)


if __name__ == "__main__":
    main()
