"""Benchmark one or more models side by side on the same data, machine and run."""

from __future__ import annotations

import os
from typing import Any

import onnx

from edgewise.data import Splits
from edgewise.profile.feeds import Feeder, model_inputs, session_inputs
from edgewise.profile.fidelity import fidelity, ground_truth, infer_task, with_alphabet
from edgewise.profile.macs import count_macs
from edgewise.profile.measure import measure_latency, measure_throughput, model_memory, run_outputs
from edgewise.profile.runtime import make_session
from edgewise.targets import TargetProfile


def bench(models: list[tuple[str, onnx.ModelProto]], splits: Splits, target: TargetProfile, batch: int = 32,
          runs: int = 300, memory: bool = True, reference: set[str] | None = None,
          remote: str | None = None, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Latency p50/p90/p99 (batch 1, one thread and all cores, interleaved across models), throughput at
    batch 1 and `batch`, size on disk, peak memory, test accuracy and an energy estimate per inference.

    The first model is the reference for fidelity (top-1 agreement, cosine) when the data has no labels.
    `labels`: a text recognizer's dictionary, when its model carries no alphabet (`fidelity.ctc_alphabet`).
    Models named in `reference` (bundles for int8-only MCU targets) are scored with int8 reference
    semantics, as the device's integer kernels compute; their latency is still ORT's on this machine.

    `remote` (an agent started with --allow-bench): latency is measured on that device instead, with the
    target's execution providers, and peak memory there too; throughput is then not measured.
    """
    reference = reference or set()
    test = splits.test
    rows: list[dict[str, Any]] = []
    ref_out: list[Any] | None = None
    task = None
    for name, model in models:
        sess = make_session(model, threads=1, reference=name in reference)
        out = run_outputs(sess, test)
        if ref_out is None:
            ref_out = out
            task = with_alphabet(infer_task(out, test.sample_shape if not test.named else None, test.y is not None),
                                 model, out, labels or ())
        fid = fidelity(task, out, ref_out, ground_truth(task, test))
        macs = count_macs(model)
        rows.append({"model": name, "size_bytes": model.ByteSize(), "accuracy": fid.accuracy,
                     "top1_agreement": fid.top1_agreement, "cosine": fid.cosine, "macs": macs,
                     "task": task.name, "fidelity_kind": fid.kind, "fidelity": fid.score,
                     "energy_uj_estimate": macs * target.energy_pj_per_mac * 1e-6,
                     "energy_pj_per_mac": target.energy_pj_per_mac, "test_samples": len(test),
                     "accuracy_semantics": "int8 reference" if name in reference else "onnxruntime"})
    cores = os.cpu_count() or 1
    if remote is not None:
        from edgewise.profile.remote import RemoteBench

        device = RemoteBench.at(remote)
        ids = [device.upload(m) for _, m in models]
        feed = Feeder(model_inputs(models[0][1]), test).one(0)
        for threads, key in ((1, "latency_1t"), (0, "latency_all")):
            stats, ran = device.run(ids, feed, runs, min(20, runs), threads, target.execution_providers)
            for row, st, where in zip(rows, stats, ran):
                row[key], row["measured_on"] = st.as_dict(), device.label(where)
        for row, mid in zip(rows, ids):  # a fresh process per model on the device
            row["peak_memory"] = device.memory(mid, feed, threads=1)
        rows[0]["all_cores"] = (device.machine or {}).get("cores", "?")
        memory = False
    else:
        for threads, key in ((1, "latency_1t"), (0, "latency_all")):
            sessions = [make_session(m, threads=threads) for _, m in models]
            feed = Feeder(session_inputs(sessions[0]), test).one(0)
            for row, stats in zip(rows, measure_latency(sessions, feed, runs=runs)):
                row[key] = stats.as_dict()
            for row, sess in zip(rows, sessions):
                suffix = "1t" if threads == 1 else "all"
                row[f"throughput_b1_{suffix}"] = measure_throughput(sess, test, 1, seconds=0.5)
                row[f"throughput_b{batch}_{suffix}"] = measure_throughput(sess, test, batch, seconds=0.5)
        rows[0]["all_cores"] = cores
    if memory:
        for row, (_, model) in zip(rows, models):
            row["peak_memory"] = model_memory(model, threads=1, feed=feed)
    base = rows[0]["latency_1t"]["p50_ms"]
    for row in rows:
        row["speedup_1t"] = base / row["latency_1t"]["p50_ms"]
        row["size_ratio"] = rows[0]["size_bytes"] / row["size_bytes"]
    return rows
