"""Reliability of real agent and fleet server processes under hostile bodies and sustained load.

1. Hostile bodies, each sent to a fresh agent (or fleet server) process: the status it answered and its peak
   RSS above idle (VmHWM from /proc, reset before each case). The fleet server also gets 20,000 requests with
   a different forged Authorization header each (the rate limiter must not keep a bucket per header).
2. Load: 100 concurrent keep-alive clients POST batch-1 predictions for --seconds; requests/s, p50/p99
   latency seen by the clients, and every non-200.

Run: .venv/bin/python benchmarks/bench_reliability.py [--seconds 60]   (writes the 'reliability' section)
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
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


ADMIN = "bench-admin-token-0123456789"


class Service:
    """An edgewise service as its own process on a free loopback port, ready once /health answers."""

    def __init__(self, args: list[str]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgewise.cli", *args, "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "EDGEWISE_ADMIN_TOKEN": ADMIN})
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


def fleet_cases() -> list[tuple[str, str, object, dict]]:
    j = {"content-type": "application/json"}
    a = {**j, "authorization": f"Bearer {ADMIN}"}
    enroll = "/v1/device/enroll"
    return [
        ("fleet: 1 GiB enrolment, chunked", enroll, _chunks(1 << 30), {**j, "transfer-encoding": "chunked"}),
        ("fleet: 1 GiB Content-Length, 1 MiB sent", enroll, b" " * MIB, {**j, "content-length": str(1 << 30)}),
        ("fleet: enrolment JSON nested 1,500 deep", enroll, b'{"token": ' + b"[" * 1500 + b"]" * 1500 + b"}", j),
        ("fleet: token as a list", enroll, b'{"token": ["a"], "name": {"x": 1}}', j),
        ("fleet: token ttl_s NaN", "/v1/admin/enroll-tokens", b'{"ttl_s": NaN}', a),
        ("fleet: token ttl_s a string", "/v1/admin/enroll-tokens", b'{"ttl_s": "soon"}', a),
        ("fleet: rollout gate untyped", "/v1/admin/rollouts",
         b'{"model": "m", "version": "1.0.0", "gate": {"max_error_rate": "x", "min_reports": [1]}}', a),
        ("fleet: report, serial a list", "/v1/device/report", b'{"serial": [1, 2], "step": "health", "ok": true}',
         {**j, "authorization": "DEVICE"}),
        ("fleet: report, serial 10^30", "/v1/device/report", b'{"serial": 1' + b"0" * 30 + b', "step": "health"}',
         {**j, "authorization": "DEVICE"}),
    ]


def _one_case(svc: Service, path: str, body: object, headers: dict) -> tuple[object, int, bool]:
    idle = svc.rss("VmRSS")
    svc.reset_peak()
    try:
        status: object = svc.request("POST", path, body, headers)
    except (OSError, http.client.HTTPException) as e:
        status = f"closed ({type(e).__name__})"
    return status, svc.rss("VmHWM") - idle, svc.request("GET", "/health") == 200


def hostile(bundle: Path) -> list[list[object]]:
    rows = []
    for name, path, body, headers in hostile_cases():
        agent = Service(["agent", "--bundle", str(bundle), "--tier", "server", "--data-dir", str(WORK / "rel-agent")])
        try:
            agent.request("POST", "/predict", json.dumps({"inputs": [[[[0.0] * 8] * 8]]}).encode(),
                          {"content-type": "application/json"})  # the model loaded: idle means ready
            status, peak, alive = _one_case(agent, path, body, headers)
            rows.append([name, status, f"{peak / MIB:.1f} MB", "yes" if alive else "**no**"])
        finally:
            agent.stop()
    for name, path, body, headers in fleet_cases():
        fleet = Service(["fleet", "serve", "--data-dir", str(WORK / f"rel-fleet-{len(rows)}")])
        try:
            if headers.get("authorization") == "DEVICE":  # an enrolled device's own credential
                headers = {**headers, "authorization": _enrolled(fleet)}
            status, peak, alive = _one_case(fleet, path, body, headers)
            rows.append([name, status, f"{peak / MIB:.1f} MB", "yes" if alive else "**no**"])
        finally:
            fleet.stop()
    rows.append(forged_headers())
    return rows


def _enrolled(fleet: Service) -> str:
    def post(path: str, doc: dict, auth: dict) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=30)
        c.request("POST", path, json.dumps(doc).encode(), {"content-type": "application/json", **auth})
        return json.loads(c.getresponse().read())

    token = post("/v1/admin/enroll-tokens", {}, {"authorization": f"Bearer {ADMIN}"})["token"]
    ident = post("/v1/device/enroll", {"token": token, "name": "bench"}, {})
    return f"Bearer {ident['device_id']}.{ident['secret']}"


def forged_headers(n: int = 20_000) -> list[object]:
    """n device requests, each with a different forged credential, over 8 keep-alive connections."""
    fleet = Service(["fleet", "serve", "--data-dir", str(WORK / "rel-fleet-forged")])
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    try:
        idle = fleet.rss("VmRSS")
        fleet.reset_peak()

        def client(k: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=30)
            for i in range(k, n, 8):
                c.request("GET", "/v1/device/assignment", headers={"authorization": f"Bearer dev-{i}.{i:064x}"})
                r = c.getresponse()
                r.read()
                with lock:
                    statuses[r.status] = statuses.get(r.status, 0) + 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = fleet.rss("VmHWM") - idle
        alive = fleet.request("GET", "/health") == 200
    finally:
        fleet.stop()
    answered = ", ".join(f"{v:,}x {k}" for k, v in sorted(statuses.items()))
    return [f"fleet: {n:,} forged device credentials", answered, f"{peak / MIB:.1f} MB", "yes" if alive else "**no**"]


def load(bundle: Path, seconds: float, clients: int = 100) -> dict[str, float]:
    agent = Service(["agent", "--bundle", str(bundle), "--tier", "server", "--data-dir", str(WORK / "rel-load")])
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


SURFACES = [  # (surface, test file, how its cases are made)
    ("agent + fleet HTTP APIs", "tests/agent/test_api_fuzz.py", "schemathesis from the OpenAPI schemas, 60 examples "
                                                                  "per operation, valid and invalid"),
    ("bundle parser, manifest, archive, .npy/.npz", "tests/bundle/test_properties.py", "hypothesis, 150 examples "
                                                                                        "per property"),
    ("agent: hostile requests", "tests/agent/test_hardening.py", "the issue's cases, one test each"),
    ("fleet: hostile requests", "tests/fleet/test_hostile.py", "the issue's cases, one test each"),
    ("chaos: kill -9, full disk, cut link", "tests/agent/test_chaos.py", "one run, all faults in turn"),
]


def surfaces() -> tuple[list[list[object]], str]:
    """Run each surface's tests; count cases and failures from pytest's JUnit XML. The chaos test prints
    what it acknowledged and what arrived."""
    import xml.etree.ElementTree as ET

    rows, chaos = [], "not run"
    root = Path(__file__).resolve().parent.parent
    for surface, path, how in SURFACES:
        xml = WORK / "rel-junit.xml"
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", path,
                            f"--junitxml={xml}"], cwd=root, capture_output=True, text=True)
        suite = ET.parse(xml).getroot().find("testsuite")
        assert suite is not None
        n, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        rows.append([surface, how, n - skipped, f"**{failed}**" if failed else 0, skipped])
        for line in r.stdout.splitlines():
            if line.startswith("acked "):
                chaos = line.split(", health")[0]
        if "test_chaos" in path and skipped:
            chaos = "skipped here (needs root, iproute2 and tmpfs mounts)"
    return rows, chaos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--no-surfaces", action="store_true", help="skip running the fuzz/property/chaos tests")
    args = ap.parse_args()
    surf, chaos = ([], "not run") if args.no_surfaces else surfaces()
    for r in surf:
        print(r, flush=True)
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
    md = ("Cases tried per surface (goal: 0 failures), from the test suite run by this script:\n\n"
          + table(["surface", "cases made by", "tests run", "failed", "skipped"], surf)
          + f"\n\nChaos run (endpoint under load; upstream killed -9 and restarted, disk filled and freed, link cut "
          f"with `ip link` in a namespace; goal: acknowledged = delivered, exactly once): {chaos}.\n\n"
          if surf else "")
    md += (f"Machine: {machine()}; CPU flags: {cpu_flags()}. Real agent (`edgewise agent --tier server`, the digits "
          "CNN) and fleet server (`edgewise fleet serve`, SQLite) processes on loopback.\n\nHostile bodies, one fresh "
          "process each (goal: a 4xx, <= 64 MB above idle, alive after): status answered, peak RSS above "
          "idle (VmHWM), and whether it still answered /health:\n\n"
          + table(["case", "status", "peak RSS above idle", "alive after"], rows)
          + f"\n\nLoad: 100 concurrent keep-alive clients, batch-1 JSON predictions for {ld['seconds']:.0f} s: "
          f"**{ld['rps']:,.0f} requests/s**, client-side p50 {ld['p50']:.1f} ms, p99 {ld['p99']:.1f} ms, "
          f"{ld['ok']:,} answered 200, {ld['errors']} errors {ld['bad'] or ''}.")
    write_section("reliability", md)


if __name__ == "__main__":
    main()
