"""Agent: in-process and HTTP predict overhead vs a bare InferenceSession.run, durable queue append rate,
and sync drain rate to a real receiver over loopback.

Run: .venv/bin/python benchmarks/bench_agent.py   (writes the 'agent' section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, table, write_section  # noqa: E402

from edgewise.agent.forward.queue import DurableQueue, GroupCommitter, NewItem  # noqa: E402
from edgewise.agent.forward.receiver import EventStore  # noqa: E402
from edgewise.agent.forward.sync import Syncer  # noqa: E402
from edgewise.agent.forward.upstream import HttpUpstream  # noqa: E402
from edgewise.agent.serve.cascade import CascadeConfig, Inference, PrivacyPolicy  # noqa: E402
from edgewise.agent.serve.models import ModelManager  # noqa: E402
from edgewise.data import load_splits  # noqa: E402
from tests.harness import AgentProc, free_port, make_bundle  # noqa: E402

EVENT = json.dumps({"model": "digits", "version": "1.0.0", "label": "3", "score": 0.97, "tier": "endpoint",
                    "ts": 1764072000.123, "degraded": False}).encode()


def p50(samples: list[float]) -> float:
    return float(np.percentile(np.array(samples) * 1e3, 50))


def predict_overhead(bundle: Path, tmp: Path, label: str) -> list[list[str]]:
    x = load_splits("digits").test.x[:1]
    mm = ModelManager()
    mm.register(bundle)
    m = mm.get("digits")
    bare_sess, name = m.session, m.session.get_inputs()[0].name
    plain = Inference(mm, CascadeConfig("server"), PrivacyPolicy(send_results=False))
    tmp.mkdir(parents=True, exist_ok=True)
    queue = DurableQueue(tmp / "q.db")
    committer = GroupCommitter(queue)
    queued = Inference(mm, CascadeConfig("server"), PrivacyPolicy(), committer)
    bare = lambda: bare_sess.run(None, {name: x})  # noqa: E731
    times: dict[str, list[float]] = {"bare": [], "agent": [], "bare2": [], "agent+queue": []}
    # Pairs interleaved call by call, so machine noise hits both sides alike. The queued variant gets its
    # own pairing: its fsync wait would otherwise cool the caches for whatever runs next.
    for pair, calls in ((("bare", "agent"), (bare, lambda: plain.predict("digits", x))),
                        (("bare2", "agent+queue"), (bare, lambda: queued.predict("digits", x)))):
        for _ in range(50):
            for f in calls:
                f()
        for _ in range(1000):
            for k, f in zip(pair, calls):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    committer.close()
    port = free_port()
    agent = AgentProc(["--bundle", str(bundle), "--tier", "server"], port, tmp / "http").start()
    body = json.dumps({"inputs": x.tolist()}).encode()
    http: list[float] = []
    try:
        for i in range(520):
            req = urllib.request.Request(agent.url + "/predict", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            urllib.request.urlopen(req, timeout=10).read()
            if i >= 20:
                http.append(time.perf_counter() - t)
    finally:
        agent.kill()
    base = p50(times["bare"])
    rows = [[label, "InferenceSession.run (bare)", f"{base:.3f}", "1.00x"],
            [label, "Inference.predict in process (cascade, top-1, result record)", f"{p50(times['agent']):.3f}",
             f"{p50(times['agent']) / base:.2f}x"],
            [label, "... + result durably queued before returning (group commit, fsync)",
             f"{p50(times['agent+queue']):.3f}", f"{p50(times['agent+queue']) / p50(times['bare2']):.2f}x"],
            [label, "HTTP POST /predict on loopback (JSON, one client)", f"{p50(http):.3f}", f"{p50(http) / base:.2f}x"]]
    return rows


def queue_rates(tmp: Path) -> list[list[str]]:
    rows = []
    q = DurableQueue(tmp / "rate.db")
    n = 20_000
    t = time.perf_counter()
    for _ in range(n // 200):
        q.append_many([NewItem(EVENT) for _ in range(200)])
    rows.append(["append_many, batches of 200 (one fsync each)", f"{n / (time.perf_counter() - t):,.0f}"])
    committer = GroupCommitter(DurableQueue(tmp / "gc.db"))
    per_thread = 2000

    def producer() -> None:
        for _ in range(per_thread // 10):
            committer.submit([NewItem(EVENT) for _ in range(10)])

    threads = [threading.Thread(target=producer) for _ in range(16)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows.append(["16 producers x 10 events, acknowledged after commit (group commit)",
                 f"{16 * per_thread / (time.perf_counter() - t):,.0f}"])
    committer.close()
    t = time.perf_counter()
    for _ in range(300):
        q.append(EVENT)
    rows.append(["one event per transaction (fsync each, for contrast)", f"{300 / (time.perf_counter() - t):,.0f}"])
    return rows


def drain_rate(tmp: Path) -> list[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgewise.sim.receiver", str(tmp / "srv.db"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        q = DurableQueue(tmp / "drain.db")
        n = 50_000
        for _ in range(n // 1000):
            q.append_many([NewItem(EVENT) for _ in range(1000)])
        syncer = Syncer(q, HttpUpstream(f"http://127.0.0.1:{port}"), batch=1000)
        t = time.perf_counter()
        while syncer.drain_once():
            pass
        dt = time.perf_counter() - t
        assert len(EventStore(tmp / "srv.db")) == n
    finally:
        proc.kill()
        proc.wait()
    return [f"{n:,} events, batches of 1000, to a receiver process over loopback (stored with fsync there)",
            f"{n / dt:,.0f}"]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pred = predict_overhead(make_bundle(tmp / "m", "cnn", 5, "digits"), tmp / "a", "digits cnn (24k params)")
        pred += predict_overhead(make_bundle(tmp / "w", "cnn", 2, "digits", width=4.0), tmp / "b",
                                 "digits cnn x4 width (380k params)")
        rates = queue_rates(tmp)
        drain = drain_rate(tmp)
    md = (f"## Agent: overhead, durable queue, sync\n\nMachine: {machine()}. Batch-1 p50 over 1,000 interleaved "
          "calls on the digits CNN (one thread); HTTP is one client over loopback.\n\n"
          + table(["model", "path", "p50 ms", "vs bare run"], pred)
          + "\n\nDurable queue (SQLite WAL, synchronous=FULL: every commit is fsynced), ~150-byte result events:\n\n"
          + table(["append", "events/s"], rates)
          + "\n\nSync drain:\n\n" + table(["drain", "events/s"], [drain]) + "\n")
    write_section("agent", md)


if __name__ == "__main__":
    main()
