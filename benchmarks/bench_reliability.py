"""Reliability of a real agent process under hostile bodies and sustained load.

1. Hostile bodies, each sent to a fresh agent process: the status it answered and its peak RSS above idle
   (VmHWM from /proc, reset before each case).
2. Load: 100 concurrent keep-alive clients POST batch-1 predictions for --seconds; requests/s, p50/p99
   latency seen by the clients, and every non-200.

Run: .venv/bin/python benchmarks/bench_reliability.py [--seconds 60]   (writes the 'reliability' section)
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_flags, machine, table, trained, write_section  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.targets import load_target  # noqa: E402

MIB = 1 << 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    def __init__(self, bundle: Path, data: Path) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgewise.cli", "agent", "--bundle", str(bundle),
                                      "--tier", "server", "--port", str(self.port), "--data-dir", str(data)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.request("GET", "/health")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(self.proc.stderr.read().decode()[-1000:])

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None) -> int:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def rss(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _chunks(total: int, size: int = MIB):  # type: ignore[no-untyped-def]
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def hostile_cases() -> list[tuple[str, str, object, dict]]:
    npy_header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    npy_header += b" " * (63 - len(npy_header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(npy_header).to_bytes(2, "little") + npy_header
    j = {"content-type": "application/json"}
    return [
        ("1 GiB body, chunked", "/predict", _chunks(1 << 30), {**j, "transfer-encoding": "chunked"}),
        ("1 GiB Content-Length, 1 MiB sent", "/predict", b" " * MIB, {**j, "content-length": str(1 << 30)}),
        ("gzip bomb, 1 GiB expanded", "/v1/events", gzip.compress(b" " * (1 << 30), 9), j),
        ("JSON nested 3,000 deep", "/predict", b"[" * 3000 + b"]" * 3000, j),
        ("invalid UTF-8", "/predict", b'{"inputs": "\xff\xfe"}', j),
        ("400-digit integer", "/predict", b'{"inputs": [' + b"9" * 400 + b"]}", j),
        (".npy declaring 10^12 floats", "/predict", npy, {"content-type": "application/x-npy"}),
        ("label 10^30", "/v1/samples", json.dumps({"inputs": [[[[0.0] * 8] * 8]], "labels": [10**30]}).encode(), j),
        ("priority 10^30", "/v1/events", json.dumps({"events": [{"key": "k", "topic": "t", "json": {},
                                                                   "priority": 10**30}]}).encode(), j),
        ("lone surrogate key", "/v1/events", b'{"events": [{"key": "\\ud800", "topic": "t", "json": {}}]}', j),
    ]


def hostile(bundle: Path) -> list[list[object]]:
    rows = []
    for name, path, body, headers in hostile_cases():
        agent = Agent(bundle, WORK / "rel-agent")
        try:
            agent.request("POST", "/predict", json.dumps({"inputs": [[[[0.0] * 8] * 8]]}).encode(),
                          {"content-type": "application/json"})  # the model loaded: idle means ready
            idle = agent.rss("VmRSS")
            agent.reset_peak()
            try:
                status: object = agent.request("POST", path, body, headers)
            except (OSError, http.client.HTTPException) as e:
                status = f"closed ({type(e).__name__})"
            peak = agent.rss("VmHWM") - idle
            alive = agent.request("GET", "/health") == 200
            rows.append([name, status, f"{peak / MIB:.1f} MB", "yes" if alive else "**no**"])
        finally:
            agent.stop()
    return rows


def load(bundle: Path, seconds: float, clients: int = 100) -> dict[str, float]:
    agent = Agent(bundle, WORK / "rel-load")
    x = load_splits("digits").test.x
    bodies = [json.dumps({"inputs": x[i : i + 1].tolist()}).encode() for i in range(64)]
    lat: list[float] = []
    bad: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.time() + seconds

    def client(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
        i = k
        while time.time() < stop:
            t = time.perf_counter()
            try:
                c.request("POST", "/predict", body=bodies[i % len(bodies)],
                          headers={"content-type": "application/json"})
                r = c.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
            dt = time.perf_counter() - t
            with lock:
                if status == 200:
                    lat.append(dt)
                else:
                    bad[str(status)] = bad.get(str(status), 0) + 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    agent.stop()
    a = np.array(lat) * 1e3
    return {"rps": len(lat) / wall, "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "ok": len(lat), "errors": sum(bad.values()), "bad": bad, "seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    model = trained("cnn", "digits", 8)
    out = WORK / "rel-opt"
    if not (out / "bundle").is_dir():
        optimize(model, "digits", load_target("edge-server"), out,
                 SearchOptions(torch_passes=False, only=("baseline-fused",), measure_memory=False))
    bundle = out / "bundle"
    rows = hostile(bundle)
    for r in rows:
        print(r, flush=True)
    ld = load(bundle, args.seconds)
    print(ld, flush=True)
    md = (f"Machine: {machine()}; CPU flags: {cpu_flags()}. A real agent process (`edgewise agent --tier server`, "
          "the digits CNN) on loopback.\n\nHostile bodies, one fresh agent each: status answered, peak RSS above "
          "idle (VmHWM), and whether it still answered /health:\n\n"
          + table(["case", "status", "peak RSS above idle", "alive after"], rows)
          + f"\n\nLoad: 100 concurrent keep-alive clients, batch-1 JSON predictions for {ld['seconds']:.0f} s: "
          f"**{ld['rps']:,.0f} requests/s**, client-side p50 {ld['p50']:.1f} ms, p99 {ld['p99']:.1f} ms, "
          f"{ld['ok']:,} answered 200, {ld['errors']} errors {ld['bad'] or ''}.")
    write_section("reliability", md)


if __name__ == "__main__":
    main()
