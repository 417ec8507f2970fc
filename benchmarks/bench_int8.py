"""int8 size, accuracy and speed: the chosen int8 models vs fp32 and vs quantize_static at its defaults.

Run: .venv/bin/python benchmarks/bench_int8.py   (writes the 'int8' section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine, table, trained, write_section  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.modelio import load_onnx, weight_bytes  # noqa: E402
from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.profile import evaluate, make_session, measure_latency, run_model  # noqa: E402
from edgewise.source import fit_data, load_source  # noqa: E402
from edgewise.targets import load_target  # noqa: E402


def ort_defaults_vs_chosen(model_path: Path, data: str, chosen_bundle: Path, reference: bool) -> dict[str, float]:
    """Accuracy and speed of `quantize_static` at its defaults vs our chosen model, same data and run."""
    src, splits = fit_data(load_source(model_path), load_splits(data))
    q = Quantizer(src.model, splits.train.x, 256)
    default = q.static(ORT_DEFAULTS)
    q.close()
    chosen = load_onnx(chosen_bundle / "model.onnx")
    test = splits.test
    ref = run_model(make_session(src.model), test.x)
    fd = evaluate(run_model(make_session(default, reference=reference), test.x), test.y, ref)
    fc = evaluate(run_model(make_session(chosen, reference=reference), test.x), test.y, ref)
    # Our most accurate int8 model of the *same* (unpruned) network, for a like-for-like comparison.
    from edgewise.optimize.candidates import static_configs
    from edgewise.optimize.compact import compact

    q = Quantizer(src.model, splits.train.x, 256)
    target = load_target("mcu-256k" if reference else "cortex-a")
    ours = max((evaluate(run_model(make_session(compact(q.static(c)), reference=reference), test.x), test.y, ref).score
                for c in static_configs(target, primary=True)))
    q.close()
    fp, sd, sc = measure_latency([make_session(src.model), make_session(default), make_session(chosen)],
                                 test.x[0], runs=200)
    return {"default_score": fd.score, "chosen_score": fc.score, "same_model_score": ours, "fp32_score": evaluate(ref, test.y, ref).score,
            "default_speed": fp.p50_ms / sd.p50_ms, "chosen_speed": fp.p50_ms / sc.p50_ms}


def run_case(label: str, model: Path, data: str, target: str, opts: SearchOptions) -> dict:
    t0 = time.perf_counter()
    out = WORK / f"opt-{label}"
    o = optimize(model, data, load_target(target), out, opts, log=lambda m: print("   ", m, flush=True))
    f = o.result.final
    fp32 = o.result.baseline
    chosen = o.result.chosen
    row = {"label": label, "target": target, "chosen": chosen.id if chosen else "-", "final": f,
           "seconds": time.perf_counter() - t0, "result": o.result, "bundle": o.bundle}
    if chosen:
        row["file_ratio"] = f["baseline_size_bytes"] / f["size_bytes"]
        row["weight_ratio"] = weight_bytes(fp32.model) / weight_bytes(chosen.model)
    return row


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    opts = SearchOptions()
    # 1) size + accuracy on the two tier-1 models, int8-only target
    for label, arch, data, epochs in (("digits-cnn", "cnn", "digits", 25), ("basicmotions-cnn1d", "cnn1d", "basicmotions", 40)):
        model = trained(arch, data, epochs)
        r = run_case(f"{label}-mcu", model, data, "mcu-256k", opts)
        cmp = ort_defaults_vs_chosen(model, data, r["bundle"], reference=True)
        rows.append([label, "mcu-256k", r["chosen"], f"{r['final']['baseline_accuracy'] * 100:.2f}%",
                     f"{r['final']['accuracy'] * 100:.2f}%",
                     f"{(r['final']['baseline_accuracy'] - r['final']['accuracy']) * 100:+.2f}",
                     f"{r['file_ratio']:.2f}x", f"{r['weight_ratio']:.2f}x", "n/a (MCU: estimated)",
                     f"{cmp['default_score'] * 100:.2f}% vs {cmp['chosen_score'] * 100:.2f}%",
                     f"{cmp['default_score'] * 100:.2f}% vs {cmp['same_model_score'] * 100:.2f}%"])
        # the same model's plain int8 (no pruning/distillation), to separate quantization from the other passes
        plain = [c for c in r["result"].candidates if c.parent == "baseline" and c.precision == "int8" and c.feasible]
        if plain:
            best = min(plain, key=lambda c: c.metrics["size_bytes"])
            notes.append(f"{label}: best int8-only candidate of the unpruned model is `{best.id}`: "
                         f"{r['result'].baseline.metrics['size_bytes'] / best.metrics['size_bytes']:.2f}x smaller file, "
                         f"{weight_bytes(r['result'].baseline.model) / weight_bytes(best.model):.2f}x smaller weights, "
                         f"validation drop {best.metrics['accuracy_drop_points']:+.2f} points")
    # 2) conv-heavy: the zoo cnn at 64x64 for a Raspberry-Pi class target (latency objective, one thread)
    model = trained("cnn", "digits:64", 20)
    r = run_case("digits64-cnn-cortex-a", model, "digits:64", "cortex-a", SearchOptions(torch_passes=False))
    cmp = ort_defaults_vs_chosen(model, "digits:64", r["bundle"], reference=False)
    f = r["final"]
    int8 = [c for c in r["result"].candidates if c.precision == "int8" and c.status == "ok"]
    fastest = min(int8, key=lambda c: c.metrics["latency_p50_ms"])
    rows.append(["digits:64-cnn", "cortex-a", r["chosen"], f"{f['baseline_accuracy'] * 100:.2f}%",
                 f"{f['accuracy'] * 100:.2f}%", f"{(f['baseline_accuracy'] - f['accuracy']) * 100:+.2f}",
                 f"{r['file_ratio']:.2f}x", f"{r['weight_ratio']:.2f}x", f"{f['speedup']:.2f}x (1 thread)",
                 f"{cmp['default_score'] * 100:.2f}% vs {cmp['chosen_score'] * 100:.2f}%",
                     f"{cmp['default_score'] * 100:.2f}% vs {cmp['same_model_score'] * 100:.2f}%"])
    notes.append(f"digits:64-cnn: quantize_static defaults run at {cmp['default_speed']:.2f}x fp32 speed, the chosen "
                 f"model at {cmp['chosen_speed']:.2f}x (same run, 1 thread); fastest int8 candidate `{fastest.id}` "
                 f"measured {r['result'].baseline.metrics['latency_p50_ms'] / fastest.metrics['latency_p50_ms']:.2f}x "
                 f"during the search")
    allcores = _all_cores(model, "digits:64", r["bundle"])
    notes.append(f"digits:64-cnn on all {os.cpu_count()} cores: chosen model {allcores:.2f}x fp32 speed")
    # 3) the real third-party model: PaddleOCR's text-direction classifier from the rapidocr wheel
    import rapidocr_onnxruntime

    cls = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    r = run_case("rapidocr-cls-cortex-a", cls, "textlines:600", "cortex-a", SearchOptions(sensitivity_max_layers=24))
    cmp = ort_defaults_vs_chosen(cls, "textlines:600", r["bundle"], reference=False)
    f = r["final"]
    int8 = [c for c in r["result"].candidates if c.precision == "int8" and c.feasible]
    best8 = max(int8, key=lambda c: c.metrics["top1_agreement"]) if int8 else None
    rows.append(["rapidocr cls (MobileNetV3)", "cortex-a", r["chosen"], f"{f['baseline_accuracy'] * 100:.2f}%",
                 f"{f['accuracy'] * 100:.2f}%", f"{(f['baseline_accuracy'] - f['accuracy']) * 100:+.2f}",
                 f"{r['file_ratio']:.2f}x", f"{r['weight_ratio']:.2f}x", f"{f['speedup']:.2f}x (1 thread)",
                 f"{cmp['default_score'] * 100:.2f}% vs {cmp['chosen_score'] * 100:.2f}%",
                     f"{cmp['default_score'] * 100:.2f}% vs {cmp['same_model_score'] * 100:.2f}%"])
    if best8:
        b = r["result"].baseline.metrics
        notes.append(f"rapidocr cls: best int8 candidate `{best8.id}` keeps {best8.metrics['top1_agreement'] * 100:.2f}% "
                     f"top-1 agreement with fp32 (validation), {b['size_bytes'] / best8.metrics['size_bytes']:.2f}x "
                     f"smaller, but runs at {b['latency_p50_ms'] / best8.metrics['latency_p50_ms']:.2f}x fp32 speed; "
                     f"quantize_static defaults run at {cmp['default_speed']:.2f}x")
    md = (f"## int8: size, accuracy, speed\n\nMachine: {machine()}. Accuracy on the test split (rapidocr: labelled "
          "text crops, so accuracy is true upright/180 labels). MCU rows score int8 with reference integer "
          "semantics (how the device's kernels compute); latency for them is not measured here.\n\n"
          + table(["model", "target", "chosen", "fp32 acc", "chosen acc", "drop (pts)", "file smaller",
                   "weights smaller", "speed vs fp32", "quantize_static defaults vs chosen (acc)", "defaults vs our best int8 of the same network"], rows)
          + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_section("int8", md)


def _all_cores(model: Path, data: str, bundle: Path) -> float:
    src, splits = fit_data(load_source(model), load_splits(data))
    chosen = load_onnx(bundle / "model.onnx")
    a, b = measure_latency([make_session(src.model, threads=0), make_session(chosen, threads=0)],
                           splits.test.x[0], runs=300)
    return a.p50_ms / b.p50_ms


if __name__ == "__main__":
    main()
