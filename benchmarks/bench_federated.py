"""Federated learning on digits with Flower's simulation engine: FedAvg vs centralized training of the same
model under label skew, FedAvg vs FedProx under strong skew, and how many clients this machine simulates.

Run: .venv/bin/python benchmarks/bench_federated.py [--quick]   (writes the 'federated' section of RESULTS.md)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, table, write_section  # noqa: E402

from edgewise.federated.config import FedConfig  # noqa: E402
from edgewise.federated.simulate import run  # noqa: E402


def tree_rss_mb() -> float:
    """Resident memory of this process and all its descendants (Ray's workers are separate processes)."""
    total, me = 0, os.getpid()
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                parents[int(d)] = int(stat[1])
                rss[int(d)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                pass
    for pid in rss:
        p = pid
        while p and p != me and p in parents:
            p = parents[p]
        if p == me:
            total += rss[pid]
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args()
    rounds = 5 if args.quick else 30
    tmp = Path(tempfile.mkdtemp(prefix="edgewise-fl-"))
    rows = []
    for alpha, strategy in (("0.5", "fedavg"), ("0.1", "fedavg"), ("0.1", "fedprox")):
        cfg = FedConfig(model="cnn", clients=20, rounds=rounds, partition=f"dirichlet:{alpha}", strategy=strategy,
                        local_epochs=2, lr=0.05, proximal_mu=0.1)
        t = time.perf_counter()
        h = run(cfg, tmp / f"{alpha}-{strategy}")
        took = time.perf_counter() - t
        acc = [r["accuracy"] for r in h["rounds"]]
        c = h["centralized_accuracy"]
        within = next((r["round"] for r in h["rounds"] if r["accuracy"] >= c - 0.02), None)
        rows.append([f"dirichlet {alpha}", strategy, f"{acc[-1] * 100:.2f}%", f"{max(acc) * 100:.2f}%",
                     f"{c * 100:.2f}%", f"{(c - acc[-1]) * 100:+.2f}", str(within) if within else "never",
                     f"{min(h['client_sizes'])}-{max(h['client_sizes'])}", f"{took:.0f} s"])
        print(rows[-1], flush=True)
    scale = []
    for n in (50, 200, 500):
        cfg = FedConfig(model="cnn", clients=n, rounds=5, partition="iid", local_epochs=3)
        t = time.perf_counter()
        peak = [0.0]
        try:
            h = run(cfg, tmp / f"scale-{n}", on_round=lambda *_: peak.__setitem__(0, max(peak[0], tree_rss_mb())),
                    baseline=False)
            scale.append([str(n), f"{h['rounds'][-1]['accuracy'] * 100:.2f}%", f"{time.perf_counter() - t:.0f} s",
                          f"{peak[0]:,.0f} MB"])
        except Exception as e:  # the largest count that completes is the figure; say what stopped the next
            scale.append([str(n), f"failed: {type(e).__name__}", f"{time.perf_counter() - t:.0f} s", "-"])
            break
        print(scale[-1], flush=True)
    md = (f"## Federated learning (Flower simulation engine)\n\nMachine: {machine()}. Digits, zoo CNN, "
          f"{rounds} rounds, every client each round, 2 local epochs of SGD (lr 0.05, momentum 0.9); "
          "test accuracy of the global model after each round. Centralized: the same model and optimizer on "
          "all training data for as many epochs as one client trains in total. 'Within 2 pts' is the first "
          "round whose accuracy is at most 2 points below centralized.\n\n"
          + table(["partition", "strategy", "final", "best round", "centralized", "gap (pts)", "within 2 pts at round",
                   "client sizes", "time"], rows)
          + "\n\nSimulation scale on this machine (zoo CNN, IID, 5 rounds, 3 local epochs; the 1,078 training "
            "samples shared by all clients, so more clients means fewer samples each; memory: this process "
            "and Ray's workers, sampled after each round):\n\n"
          + table(["clients", "accuracy after 5 rounds", "time", "peak memory"], scale) + "\n")
    print(md)
    write_section("federated", md)


if __name__ == "__main__":
    main()
