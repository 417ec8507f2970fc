"""GPU execution providers (issue 12): what `optimize --target jetson-orin` chooses where ONNX Runtime's CUDA
provider is present, against what a user would deploy instead on the same GPU, all measured in one run.

Peers (batch 1, measured in turns of blocks): ORT fp32 on the CPU (every core, and jetson-orin's thread count:
the one its CPU candidate runs with), ORT fp32 on CUDA, ORT fp16 on CUDA
(ORT's float16 converter, float32 inputs and outputs) and ORT `quantize_static` at its defaults on CUDA. The
chosen deployment runs on the providers jetson-orin names (TensorRT, CUDA, CPU: the first that starts).

Three steps, because the GPU machine has neither network nor ultralytics:
    .venv/bin/python benchmarks/bench_gpu.py prepare DIR           # here: export the models as ONNX
    python3 benchmarks/bench_gpu.py run DIR --json OUT.json        # there, with onnxruntime-gpu
    .venv/bin/python benchmarks/bench_gpu.py record OUT.json       # here: the 'gpu' section of RESULTS.md

On this project's GPU machines (Python 3.12, no network, 64 MB carried per call), `benchmarks/gpu/pack.sh`
does the first step and packs the rest: onnxruntime-gpu's wheel (255 MB) as an xz tar (204 MB) in parts of
63.5 MB, one carried per call in calls close enough that the machine stays warm (it keeps /tmp), and the
wheels edgewise needs there beyond the image's (cryptography, cffi, pycparser, onnx2torch). The last call
carries the last part, the models and the wheels, and runs `benchmarks/gpu/device.sh`: ORT under /tmp/site,
the GPU tests, then `run`. In stop 29 that took 12 of the 15 minutes of device time for 8 models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, table, write_section  # noqa: E402

TEST_SAMPLES = 200
# name -> (how to build it, --data, --task), in the order a run measures them (a GPU session may end early):
# the trained detector first, since its boxes give a real mAP; then real pretrained weights (PP-OCR) and the
# zoo's trained models; models with random weights last (their scores are agreement with fp32 only).
MODELS = {
    "yolov8n-shapes": ("yolov8n-shapes", None, None),
    "ppocr-det": ("ppocr-det", None, None),
    "zoo-tinydet": ("zoo:tinydet", "shapes", "detection"),
    "zoo-cnn": ("zoo:cnn", "digits", None),
    "ppocr-cls": ("ppocr-cls", None, None),
    "yolov8n-640": ("yolov8n@640", "photos:640", "detection"),
    "ssdlite": ("ssdlite", None, None),
    "mobilenetv3-small": ("mobilenetv3-small", None, None),
    "lraspp": ("lraspp", None, None),
}
# the zoo's models, trained as bench_corpus trains them: (arch, data, epochs)
ZOO = {"tinydet": ("shapes", 30), "cnn": ("digits", 25)}


def prepare(directory: Path, names: list[str]) -> None:
    from _common import trained

    from edgewise.zoo import corpus

    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"no such model: {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    for name in names or list(MODELS):
        what, data, task = MODELS[name]
        d = directory / name
        d.mkdir(parents=True, exist_ok=True)
        if what.startswith("yolov8n@"):
            path = corpus.yolov8n_onnx(d / "model.onnx", int(what.split("@")[1]))
        elif what.startswith("zoo:"):
            arch = what.removeprefix("zoo:")
            path = trained(arch, data, ZOO[arch][1]) / "model.onnx"
        else:
            path, data = corpus.build(what, d)
            task = corpus.get(what).task_flag
        if path.parent != d:  # a model shipped inside a wheel, or a training run: copied, so it travels alone
            path = Path(shutil.copy(path, d / "model.onnx"))
        (d / "spec.json").write_text(json.dumps({"model": path.name, "data": data, "task": task}))
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, data {data}", flush=True)


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "?"
    except OSError:
        return "no nvidia-smi"


def _interleaved(sessions: dict, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median ms of each session, measured in turns as the search measures its candidates."""
    from edgewise.profile.measure import interleaved

    times = interleaved([lambda s=s: s.run(None, feed) for s in sessions.values()], runs, warmup=10)
    return {k: float(np.median(t)) * 1e3 for k, t in zip(sessions, times)}


def bench(d: Path, budget: float, out: Path, runs: int, chosen_first: bool = False) -> dict:
    from edgewise.data import load_splits
    from edgewise.modelio import load_onnx
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer, to_fp16
    from edgewise.optimize.search import SearchOptions
    from edgewise.profile import make_session, running_on
    from edgewise.profile.feeds import Feeder, session_inputs
    from edgewise.profile.fidelity import fidelity, ground_truth
    from edgewise.source import fit_data, load_source
    from edgewise.targets import load_target

    spec = json.loads((d / "spec.json").read_text())
    model_path = d / spec["model"]
    t0 = time.perf_counter()
    opts = SearchOptions(time_budget_s=budget, task=spec["task"], measure_memory=False)
    target = load_target("jetson-orin")
    outcome = optimize(model_path, spec["data"], target, out / d.name, opts,
                       log=lambda m: print(f"    {time.perf_counter() - t0:5.0f}s {m}", flush=True))
    seconds = time.perf_counter() - t0
    r = outcome.result
    src, splits = fit_data(load_source(model_path), load_splits(spec["data"]))
    test = splits.test.head(TEST_SAMPLES)
    q = Quantizer(src.model, splits.train, 256)
    defaults = q.static(ORT_DEFAULTS)
    q.close()
    cuda = ("CUDAExecutionProvider",)
    sessions = {"CPU fp32": make_session(src.model, threads=0),
                # the thread count the search gives its own CPU candidate (baseline-fused-cpu)
                "CPU fp32 target threads": make_session(src.model, threads=target.threads),
                "CUDA fp32": make_session(src.model, providers=cuda),
                "CUDA fp16": make_session(to_fp16(src.model), providers=cuda),
                "CUDA ORT defaults int8": make_session(defaults, providers=cuda),
                "chosen": make_session(load_onnx(outcome.bundle / "model.onnx"), providers=target.execution_providers)}
    ref_sess = make_session(src.model)
    feeder = Feeder(session_inputs(ref_sess), test)
    ref = feeder.run(ref_sess)
    y = ground_truth(r.task, test)  # labels, or boxes scored at mAP50-95; None: agreement with CPU fp32
    fid = {k: fidelity(r.task, Feeder(session_inputs(s), test).run(s), ref, y).score for k, s in sessions.items()}
    order = (["chosen"] if chosen_first else []) + [k for k in sessions if k != "chosen" or not chosen_first]
    ms = _interleaved({k: sessions[k] for k in order}, feeder.one(0), runs=runs)
    row = {"model": d.name, "task": r.task.name, "chosen": r.chosen.id, "runs_on": running_on(sessions["chosen"]),
           "fidelity_kind": r.final["fidelity_kind"], "fidelity": fid,
           "scored_against": "truth" if y is not None else "CPU fp32", "ms": ms, "search_s": seconds,
           "candidates": {c.id: {"status": c.status, "p50_ms": c.metrics.get("latency_p50_ms"),
                                 "drop": c.metrics.get("accuracy_drop_points"), "source": c.metrics.get("latency_source"),
                                 "reason": c.reason} for c in [r.baseline, *r.candidates]},
           "notes": r.notes}
    print(json.dumps({k: v for k, v in row.items() if k != "candidates"}, default=float), flush=True)
    return row


def run(directory: Path, budget: float, json_out: Path, names: list[str], runs: int, chosen_first: bool = False) -> None:
    import onnxruntime as ort

    info = {"gpu": _gpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
            "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                        "?"), "time_budget_s": budget, "runs": runs, "chosen_first": chosen_first}
    print(json.dumps(info), flush=True)
    rows = []
    order = names or list(MODELS)  # as given, else the detector first: a GPU session may end early
    dirs = sorted((p for p in directory.iterdir() if (p / "spec.json").exists() and (not names or p.name in names)),
                  key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    for d in dirs:
        print(f"== {d.name}", flush=True)
        try:
            rows.append(bench(d, budget, json_out.parent / "gpu-bundles", runs, chosen_first))
        except Exception as e:  # one model's failure is a row, not the end of a scarce GPU session
            rows.append({"model": d.name, "error": f"{type(e).__name__}: {e}"[:400]})
            print(rows[-1], flush=True)
        json_out.write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=float))


def _scored(row: dict) -> str:
    """What a row's scores are: the truth's measure, or agreement with the CPU's fp32 outputs."""
    if row.get("scored_against") != "truth":
        return "agreement"
    return {"classification": "top-1", "detection": "mAP50-95"}.get(row["task"], row["fidelity_kind"])


def _best_peer(r: dict, peers: list[str]) -> str:
    """The fastest of `peers` (and CUDA fp32) that keeps within 1 point of CPU fp32's score."""
    fid = r["fidelity"]
    fair = [p for p in ["CUDA fp32", *peers] if p in fid and fid[p] >= fid["CPU fp32"] - 0.01]
    return min(fair, key=lambda p: r["ms"][p])


# The peer that computes what the chosen deployment computes, by the chosen candidate's id: the starting model on
# CUDA, or on the CPU at the target's thread count (ONNX Runtime folds Conv+BN itself, so `fused` is no change)
SAME_AS = {"baseline-fp32": "CUDA fp32", "baseline-fused-cpu": "CPU fp32 target threads"}


def record(json_files: list[Path]) -> None:
    """The 'gpu-jetson-orin' section from one or more runs' JSON (a later run's row replaces an earlier one's)."""
    runs = [json.loads(f.read_text()) for f in json_files]
    info = runs[-1]["machine"]
    by_model: dict[str, dict] = {}
    every: dict[str, list[str]] = {}  # model -> chosen / best peer in each run that measured it
    peers = ["CPU fp32", "CPU fp32 target threads", "CUDA fp16", "CUDA ORT defaults int8"]
    for k, run_ in enumerate(runs):
        for r in run_["rows"]:
            by_model[r["model"]] = {**r, "run": k + 1, "budget": run_["machine"]["time_budget_s"]}
            if "error" not in r:
                best = _best_peer(r, peers)
                every.setdefault(r["model"], []).append(
                    f"{r['ms'][best] / r['ms']['chosen']:.2f}x {best} (run {k + 1}, {r['chosen'].removeprefix('baseline-')})")
    rows = list(by_model.values())
    body, beat, misses, beat_t, misses_t = [], 0, [], 0, []
    for r in rows:
        if "error" in r:
            body.append([r["model"], f"failed: {r['error'][:60]}", *["-"] * 10])
            continue
        ms, fid, cands = r["ms"], r["fidelity"], r["candidates"]
        best = _best_peer(r, peers)
        beat += ms[best] / ms["chosen"] >= 0.95
        if ms[best] / ms["chosen"] < 0.95:
            misses.append(f"{r['model']} at {ms[best] / ms['chosen']:.2f}x {best}")
        # within the target's thread count (jetson-orin: 1): the all-core CPU is not a deployment it allows
        if "CPU fp32 target threads" in ms:
            best_t = _best_peer(r, [p for p in peers if p != "CPU fp32"])
            beat_t += ms[best_t] / ms["chosen"] >= 0.95
            if ms[best_t] / ms["chosen"] < 0.95:
                misses_t.append(f"{r['model']} at {ms[best_t] / ms['chosen']:.2f}x {best_t}")
        fp16 = cands.get("baseline-fp16")
        fp16_txt = "not reached" if fp16 is None else f"{fp16['drop']:.1f} pt drop" + (
            "" if fp16["drop"] > 1 else f", {fp16['p50_ms']:.2f} ms")
        body.append([f"{r['model']}" + (f" (run {r['run']})" if len(runs) > 1 else ""), _scored(r),
                     f"{r['chosen'].removeprefix('baseline-')} ({r['runs_on'].removesuffix('ExecutionProvider')})",
                     f"{fid['chosen'] * 100:.1f}%", f"{ms['CUDA fp32']:.2f}", f"**{ms['CUDA fp32'] / ms['chosen']:.2f}x**",
                     *[f"{ms['CUDA fp32'] / ms[p]:.2f}x ({fid[p] * 100:.1f}%)" if p in ms else "-" for p in peers],
                     f"{ms[best] / ms['chosen']:.2f}x ({best})", fp16_txt])
    ok = [r for r in rows if "error" not in r]
    same = [r for r in ok if SAME_AS.get(r["chosen"]) in r["ms"]]
    budgets = ", ".join(f"run {k + 1}: {run_['machine']['time_budget_s']:g} s, "
                        f"{run_['machine'].get('runs', 200)} runs" for k, run_ in enumerate(runs))
    trt = ("TensorRT ran" if any(r.get("runs_on") == "TensorrtExecutionProvider" for r in ok)
           else "TensorRT did not start here: no libnvinfer")
    old = [r["model"] for r in ok if "CPU fp32 target threads" not in r["ms"]]
    twice = {m: v for m, v in every.items() if len(v) > 1}
    md = (f"## GPU: the search on ONNX Runtime's CUDA provider (jetson-orin)\n\nGPU machine: {info['gpu']}; "
          f"{info['cpu']}, {info['cores']} cores, CPU flags: {info['cpu_flags']}; Python "
          f"{info['python']}, onnxruntime {info['onnxruntime']}. `optimize --target jetson-orin` per model "
          f"({budgets}; no memory probe): the search measures every candidate on the first of "
          f"TensorRT, CUDA, CPU that starts here ({trt}). Then every deployment is measured "
          "again side by side (batch 1, median of that many interleaved runs, NumPy in and out, so host-device "
          f"copies are included; CPU fp32 on all {info['cores']} cores, and at jetson-orin's thread count (1), the "
          "one its CPU candidate `fused-cpu` runs with: '-' in runs before stop 30, which had neither); speed = ORT "
          "CUDA fp32 ms / its ms. Scores are on "
          f"the test split's first {TEST_SAMPLES} samples at most: against the truth where the data has it "
          "(top-1 against the labels, "
          "mAP50-95 against the boxes), else agreement with ORT CPU fp32 (random-weight models: such a score "
          "says the numerics held, not that the model is any good). The last column is the search's own fp16 "
          "candidate on CUDA. This is an H200 server GPU with 16 Xeon cores, not a Jetson: the figures show the "
          "search choosing on a GPU, not Orin latencies.\n\n"
          + table(["model", "score", "chosen (runs on)", "its score", "CUDA fp32 ms", "chosen", *peers,
                   "chosen / best peer", "search's fp16"], body)
          + f"\n\nChosen >= 1.0x the best peer that keeps within 1 point (5% noise), all-core CPU counted: "
          f"{beat} of {len(ok)}; {len(rows) - len(ok)} model(s) failed."
          + (f" Below it: {'; '.join(misses)}." if misses else "")
          + (f" Within jetson-orin's thread count (the all-core CPU left out, since the target allows one thread), "
             f"on the rows measured with the CPU candidate: {beat_t} of {len(ok) - len(old)}"
             + (f"; below it: {'; '.join(misses_t)}" if misses_t else "") + "." if len(ok) > len(old) else "")
          + (f" Rows from runs before stop 30 ({', '.join(old)}): the search did not yet try the CPU for a GPU "
             "target." if old else "")
          + (" Ship what a peer computes, so the ratio is one computation measured twice (the spread of this "
             "measurement: run order, noise), not a gain or a loss: "
             + "; ".join(f"{peer}: " + ", ".join(f"{r['model']} {r['ms'][peer] / r['ms']['chosen']:.2f}x"
                                                  for r in same if SAME_AS[r["chosen"]] == peer)
                         for peer in dict.fromkeys(SAME_AS[r["chosen"]] for r in same)) + "." if same else "")
          + (" Measured in more than one run (chosen / best peer): "
             + "; ".join(f"{m}: {', '.join(v)}" for m, v in twice.items()) + "." if twice else ""))
    write_section("gpu-jetson-orin", md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("models", nargs="*", help=f"default: all of {', '.join(MODELS)}")
    p = sub.add_parser("run")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--time-budget", type=float, default=30)
    p.add_argument("--runs", type=int, default=200, help="interleaved runs of each deployment (default: 200)")
    p.add_argument("--chosen-first", action="store_true", help="measure the chosen deployment first in each turn "
                   "(default: last), to see whether its place in the turn moves its figure")
    p.add_argument("models", nargs="*", help="only these, in this order (a GPU session may end early); "
                   "default: all, in the order above, then by name")
    p = sub.add_parser("record")
    p.add_argument("json", type=Path, nargs="+", help="runs' JSON, oldest first (a later row replaces an earlier)")
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.dir, a.models)
    elif a.step == "run":
        run(a.dir, a.time_budget, a.json, a.models, a.runs, a.chosen_first)
    else:
        record(a.json)


if __name__ == "__main__":
    main()
