"""The three-tier cascade on digits with real agent processes on loopback: an int8 model at the endpoint
(the one `optimize` chose for mcu-256k, run as its generated C through ctypes), the zoo CNN at the node, a 2x wider CNN at the server; thresholds
from `cascade calibrate` on the validation split; every test sample sent to the endpoint as its own request.

Run: .venv/bin/python benchmarks/bench_cascade.py   (writes the 'cascade' section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import WORK, machine, table, trained, write_section  # noqa: E402

from edgewise.agent.forward.audit import AuditLog  # noqa: E402
from edgewise.agent.serve.calibrate import calibrate  # noqa: E402
from edgewise.agent.serve.cascade import probabilities  # noqa: E402
from edgewise.bundle import read_bundle  # noqa: E402
from edgewise.data import load_splits  # noqa: E402
from edgewise.profile import make_session, run_model  # noqa: E402
from tests.harness import AgentProc, bundle_trained, free_port  # noqa: E402


def scenario(title: str, endpoint_bundle: Path, endpoint_c: bool, tmp: Path, splits) -> str:  # noqa: ANN001
    """One cascade run: three agent processes, every test sample sent to the endpoint, a table per tier."""
    # A cascade escalates by model name: every tier serves its own model for the same task under one name.
    task = read_bundle(endpoint_bundle).name
    bundles = [endpoint_bundle, bundle_trained(trained("cnn", "digits", 25), tmp / "node", task),
               bundle_trained(trained("cnn", "digits", 40, width=2.0), tmp / "server", task)]
    names = ["endpoint", "node", "server"]
    val = [probabilities(run_model(make_session(onnx.load(str(b / "model.onnx")), reference=(i == 0)),
                                   splits.val.x)) for i, b in enumerate(bundles)]
    plan = calibrate(val, splits.val.y, max_drop_points=0.5)
    ports = [free_port() for _ in names]
    agents = []
    for i in (2, 1, 0):
        args = ["--bundle", str(bundles[i]), "--tier", names[i]]
        if i == 0 and endpoint_c:  # the endpoint runs the generated C, as the microcontroller would
            args += ["--runtime", "c"]
        if i < 2:
            cfg = tmp / f"{names[i]}.toml"
            cfg.write_text(f'tier = "{names[i]}"\n[privacy]\nescalate = "raw"\n[cascade]\n'
                           f"default_threshold = {plan.thresholds[i]}\n")
            args += ["--config", str(cfg), "--upstream", f"http://127.0.0.1:{ports[i + 1]}"]
        agents.append(AgentProc(args, ports[i], tmp / f"data-{names[i]}").start())
    endpoint = agents[-1]
    rows = []
    try:
        for x in splits.test.x[:20]:  # warm-up
            endpoint.post("/predict", json.dumps({"inputs": x[None].tolist()}).encode())
        raw_bytes = gz_bytes = 0
        for x, y in zip(splits.test.x, splits.test.y):
            body = json.dumps({"inputs": x[None].tolist()}).encode()
            raw_bytes += len(body)
            gz_bytes += len(gzip.compress(body))
            t = time.perf_counter()
            status, answer = endpoint.post("/predict", body)
            ms = (time.perf_counter() - t) * 1e3
            r = answer["results"][0]
            if "upstream_error" in r:
                raise SystemExit(f"escalation failed: {r['upstream_error']}")
            rows.append((r["tier"], int(r["label"]) == int(y), ms))
        deadline = time.time() + 30
        while time.time() < deadline and endpoint.get("/health")["queue"]["depth"] > 0:
            time.sleep(0.2)
    finally:
        for a in agents:
            a.kill()
    sent = {n: sum(r["bytes"] for r in AuditLog(tmp / f"data-{n}" / "audit.db").rows()) for n in ("endpoint", "node")}
    server_alone = float((val[2].argmax(1) == splits.val.y).mean())
    test_server = float((probabilities(run_model(make_session(onnx.load(str(bundles[2] / "model.onnx"))),
                                                 splits.test.x)).argmax(1) == splits.test.y).mean())
    tiers = np.array([t for t, _, _ in rows])
    ok = np.array([c for _, c, _ in rows])
    ms = np.array([m for _, _, m in rows])
    table_rows = []
    for n, thr in zip(names, plan.thresholds + [None]):
        mask = tiers == n
        table_rows.append([n, "-" if thr is None else f"{thr:.4f}", f"{mask.mean() * 100:.1f}%",
                           f"{ok[mask].mean() * 100:.2f}%" if mask.any() else "-",
                           f"{np.percentile(ms[mask], 50):.2f}" if mask.any() else "-",
                           f"{np.percentile(ms[mask], 99):.2f}" if mask.any() else "-",
                           f"{sent.get(n, 0):,}" if n != "server" else "-"])
    return (f"### {title}\n\n"
            + table(["answered at", "threshold", "share", "accuracy of its answers", "p50 ms", "p99 ms",
                     "bytes sent upstream"], table_rows)
            + f"\n\n- end-to-end accuracy {ok.mean() * 100:.2f}% vs the server model alone {test_server * 100:.2f}% "
            f"({(test_server - ok.mean()) * 100:+.2f} points; validation: cascade {plan.accuracy * 100:.2f}%, "
            f"server alone {server_alone * 100:.2f}%)\n"
            f"- bytes the endpoint sent upstream: {sent['endpoint']:,} = {sent['endpoint'] / raw_bytes * 100:.1f}% of "
            f"sending every input to the server ({raw_bytes:,} bytes of JSON requests; "
            f"{gz_bytes:,} if each were gzip-compressed: {sent['endpoint'] / gz_bytes * 100:.1f}%)\n")


def main() -> None:
    splits = load_splits("digits")
    endpoint_bundle = WORK / "opt-digits-cnn-mcu" / "bundle"
    if not endpoint_bundle.is_dir():
        raise SystemExit("run benchmarks/bench_int8.py first (it makes the mcu-256k bundle)")
    parts = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        parts.append(scenario("Endpoint: the int8 model optimize chose for mcu-256k, as generated C",
                              endpoint_bundle, True, tmp / "c", splits))
        small = bundle_trained(trained("mlp", "digits", 4, width=0.25), tmp / "mlp", "cnn")
        parts.append(scenario("Endpoint: a deliberately weak MLP (width 0.25, 4 epochs), so the cascade escalates",
                              small, False, tmp / "mlp-run", splits))
    md = (f"## Cascade: endpoint -> node -> server on digits\n\nMachine: {machine()}. Three agent processes on "
          f"loopback; {len(splits.test.y)} test samples, one request each, sent to the endpoint. Node: zoo CNN, "
          "server: 2x wider CNN. Thresholds from `calibrate` on the validation split (tolerance 0.5 points). "
          "Latency is the client's, end to end (an escalated request includes the hops above). "
          "Bytes: what each tier sent upstream (escalated inputs + result events, from its audit log).\n\n"
          + "\n".join(parts))
    write_section("cascade", md)


if __name__ == "__main__":
    main()
