"""Verbs of the model lifecycle: train, optimize, bench, compile, import, quickstart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from edgewise.cli.app import app
from edgewise.cli.common import (
    Stride,
    Window,
    _kb,
    _load_models,
    _pct,
    _print_search,
    _read_labels,
    _read_toml,
    _SearchProgress,
    _train,
    console,
    out_console,
    print_folded,
    with_windows,
)
from edgewise.errors import EdgewiseError


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo architecture: mlp, cnn, dscnn, cnn1d, mobilenetv3-small, tinydet (a detector), autoencoder (anomaly detection, trained on normal data only)")],
    data: Annotated[str, typer.Option("--data", "-d", help="digits, digits:64, basicmotions, textlines, shapes (boxes), keywords (speech), vibration (anomalies), a .npz/.csv file, or a folder: per-class subfolders of images or WAVs, or YOLO format")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (model.onnx, checkpoint.pt, train.json)")],
    epochs: Annotated[int, typer.Option(help="training epochs (the weights of the best validation epoch are kept)")] = 30,
    width: Annotated[float, typer.Option(help="channel width multiplier")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed for the split and training")] = 0,
    window: Window = None,
    stride: Stride = None,
    false_alarm_rate: Annotated[float | None, typer.Option(help="autoencoder: the share of normal windows allowed "
                                                                "to raise an alarm; sets the threshold [0.01]")] = None,
    features: Annotated[str | None, typer.Option(help="sensor windows: 'raw' (the model reads the window) or "
                                                      "'spectral' (band powers, RMS, crest, skew, kurtosis per "
                                                      "channel; for --model mlp)")] = None,
) -> None:
    """Train a zoo model on DATA, evaluate it on the test split, and export ONNX.

    An autoencoder learns normal running from the windows labelled `normal` (or all of them, for a
    recording with one label); raw sensor windows go through the spectral front end first.

    Example: edgewise train --model cnn --data digits --out runs/cnn
    Example: edgewise train --model autoencoder --data vibration --out runs/vib
    """
    if false_alarm_rate is not None and model != "autoencoder":
        raise EdgewiseError("--false-alarm-rate sets an anomaly detector's threshold: use it with --model autoencoder")
    _train(model, with_windows(data, window, stride), out, epochs, width, seed, false_alarm_rate, features)


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="an .onnx file, a `train` output directory, or a bundle")],
    target: Annotated[str, typer.Option("--target", "-t", help="mcu-256k, cortex-a, edge-node, edge-server, x86-server, intel-igpu, jetson-orin or a .toml")],
    data: Annotated[str, typer.Option("--data", "-d", help="calibration/validation/test data: a bundled name, a .npz/.csv "
                                                       "file, a folder of images or WAVs, or a text-line label file "
                                                       "(image<TAB>text per line)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory: bundle/, report.html, report.json")],
    max_accuracy_drop: Annotated[float, typer.Option(help="tolerated accuracy drop, percentage points")] = 1.0,
    torch_passes: Annotated[bool, typer.Option(help="try structured pruning and distillation (zoo classifiers), "
                                                           "or pruning of the ONNX graph, fine-tuned (others)")] = True,
    calibration_samples: Annotated[int, typer.Option(help="upper bound on calibration samples")] = 256,
    recipe: Annotated[list[str] | None, typer.Option(help="only candidates whose id matches this glob, e.g. "
                                                       "'baseline-int8-percentile*' or 'pruned-*' (repeatable)")] = None,
    name: Annotated[str | None, typer.Option(help="bundle name (default: the model's)")] = None,
    version: Annotated[str, typer.Option(help="bundle semantic version")] = "0.1.0",
    task: Annotated[str | None, typer.Option(help="what the outputs mean: classification, detection, segmentation, "
                                                  "ctc or regression (default: inferred from the outputs)")] = None,
    time_budget: Annotated[float, typer.Option(help="seconds for the search; the most promising candidates run "
                                                    "first, the rest are listed as not tried (0 = no limit)")] = 120,
    max_latency_ms: Annotated[float | None, typer.Option(help="hard latency budget (the target's own figure "
                                                               "only ranks candidates)")] = None,
    max_ram_kb: Annotated[float | None, typer.Option(help="hard RAM budget in KB")] = None,
    max_flash_kb: Annotated[float | None, typer.Option(help="hard flash / model size budget in KB")] = None,
    preprocess: Annotated[Path | None, typer.Option(help="a TOML declaring how raw input becomes the tensor: [image] "
                                                          "size, resize (letterbox|stretch), color, scale, mean, "
                                                          "std, layout; and [postprocess] conf, iou, top_k")] = None,
    labels: Annotated[Path | None, typer.Option(help="class names, one per line (e.g. a detector's); for a "
                                                     "text recognizer, its character dictionary (PaddleOCR's)")] = None,
    window: Window = None,
    stride: Stride = None,
    measure_memory: Annotated[bool, typer.Option(help="measure each candidate's peak memory in a fresh process "
                                                      "(off: quicker; the report shows the model sizes only)")] = True,
    measure_on: Annotated[str | None, typer.Option(help="measure the candidates on the device itself (latency, and "
                                                        "the outputs fidelity is scored on): the URL of an agent "
                                                        "started with --allow-bench")] = None,
) -> None:
    """Try recipes for TARGET, keep the Pareto front, and bundle the best model that fits.

    DATA for a model with several inputs is an .npz with one array per input name, samples stacked
    on a new leading axis. Fidelity is measured in the task's terms (accuracy with labels, else
    agreement with the starting model: top-1, detection mAP@0.5, map IoU, CTC character error rate,
    or output cosine).

    Example: edgewise optimize runs/cnn --target mcu-256k --data digits --out runs/cnn-mcu
    Example: edgewise optimize m.onnx -t jetson-orin -d photos:320 -o runs/orin --measure-on http://orin:8090
    """
    from edgewise.optimize.pipeline import optimize as run_optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target

    profile = load_target(target)
    data = with_windows(data, window, stride)
    opts = SearchOptions(max_accuracy_drop=max_accuracy_drop, torch_passes=torch_passes,
                         calibration_samples=calibration_samples, only=tuple(recipe or ()), task=task,
                         measure_memory=measure_memory, measure_on=measure_on,
                         time_budget_s=time_budget or None, max_latency_ms=max_latency_ms,
                         max_ram_bytes=None if max_ram_kb is None else int(max_ram_kb * 1024),
                         max_flash_bytes=None if max_flash_kb is None else int(max_flash_kb * 1024))
    declared = _read_toml(preprocess) if preprocess else None
    names = _read_labels(labels) if labels else None
    console.print(f"[bold]optimizing {model} for {profile.name}[/]" + (f" (time budget {time_budget:g} s)"
                                                                      if time_budget else ""))
    with _SearchProgress(f"optimizing {model}") as sp:
        outcome = run_optimize(model, data, profile, out, opts, name=name, version=version, log=sp.log,
                               progress=sp.progress, declared=declared, labels=names)
    _print_search(outcome)
    out_console.print(f"report: {out / 'report.html'}  ({out / 'report.json'})")
    if outcome.bundle is None:
        raise EdgewiseError(outcome.result.why)
    out_console.print(f"bundle: {outcome.bundle}")


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx files, bundles or train directories; the first is the reference")],
    data: Annotated[str, typer.Option("--data", "-d", help="bundled dataset name or file; the test split is used")],
    target: Annotated[str, typer.Option("--target", "-t", help="target whose energy per MAC prices the estimate")] = "cortex-a",
    batch: Annotated[int, typer.Option(help="larger batch for the throughput figure")] = 32,
    runs: Annotated[int, typer.Option(help="latency runs per model after warm-up")] = 300,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures as JSON")] = None,
    remote: Annotated[str | None, typer.Option(help="measure latency on the device itself: the URL of an agent "
                                                    "started with --allow-bench (with --target's execution "
                                                    "providers; no throughput or memory figures then)")] = None,
    labels: Annotated[Path | None, typer.Option(help="a text recognizer's character dictionary (PaddleOCR's), "
                                                     "when its model carries none: scored against the data's texts")] = None,
) -> None:
    """Measure models side by side: latency p50/p90/p99, throughput, size, peak memory, accuracy, energy.

    Example: edgewise bench runs/cnn runs/cnn-mcu/bundle --data digits
    Example: edgewise bench m.onnx runs/orin/bundle -d photos:320 -t jetson-orin --remote http://orin:8090
    """
    from edgewise.profile.bench import bench as run_bench
    from edgewise.targets import load_target

    profile = load_target(target)
    loaded, reference = _load_models([(str(p), p) for p in models], data)
    sp = loaded[0][2]
    with console.status("[bold]benchmarking"):
        rows = run_bench([(n, m) for n, m, _ in loaded], sp, profile, batch=batch, runs=runs, reference=reference,
                         remote=remote, labels=_read_labels(labels) if labels else None)
    def short(name: str) -> str:  # a path's last two parts are what tells the rows apart
        parts = Path(name).parts
        return "/".join(parts[-2:]) if len(parts) > 1 else name

    from edgewise.profile.fidelity import column_label

    kind = column_label(rows[0].get("fidelity_kind", "accuracy"))
    table = Table(title=f"benchmark on {data} (test split, {rows[0]['test_samples']} samples): latency",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("model", kind, "size", "p50 1t", "p99 1t", f"p50 {rows[0]['all_cores']}t", "speed", "peak mem"):
        table.add_column(col, no_wrap=col != "model", overflow="fold", justify="left" if col == "model" else "right")
    for r in rows:
        l1, la = r["latency_1t"], r["latency_all"]
        table.add_row(short(r["model"]), _pct(r.get("fidelity", r["accuracy"])), _kb(r["size_bytes"]),
                      f"{l1['p50_ms']:.3f}", f"{l1['p99_ms']:.3f}", f"{la['p50_ms']:.3f}", f"{r['speedup_1t']:.2f}x",
                      _kb(r["peak_memory"]["rss_delta_bytes"]) if "peak_memory" in r else "-")
    out_console.print(table)
    if remote:
        print_folded(out_console, "", f"latency and peak memory {rows[0]['measured_on']}; throughput is not "
                     "measured remotely", 0)
    table = Table(title="throughput and energy", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "thr b1", f"thr b{batch}", "MACs", "energy*"):
        table.add_column(col, no_wrap=col != "model", overflow="fold", justify="left" if col == "model" else "right")
    for r in rows:
        thr = [f"{r[k]:,.0f}/s" if k in r else "-" for k in ("throughput_b1_1t", f"throughput_b{batch}_1t")]
        table.add_row(short(r["model"]), *thr, f"{r['macs']:,}", f"{r['energy_uj_estimate']:.3f} µJ")
    out_console.print(table)
    print_folded(out_console, "", f"latency in ms at batch 1; * energy is an estimate: MACs x "
                 f"{profile.energy_pj_per_mac} pJ/MAC ({profile.name}); peak mem = RSS high-water mark of a fresh "
                 "process (ORT included)", 0)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
        out_console.print(f"wrote {json_out}")


@app.command("compile")
def compile_cmd(
    bundle: Annotated[Path, typer.Argument(help="an int8 bundle (from `edgewise optimize --target mcu-256k`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for model.c/.h, the kernels and main.c")],
    target: Annotated[str, typer.Option("--target", "-t", help="target whose RAM/flash budget must hold")] = "mcu-256k",
    update_bundle: Annotated[bool, typer.Option(help="also record the C sources and figures in the bundle")] = True,
    board: Annotated[str | None, typer.Option(help="also build firmware for this board with arm-none-eabi-gcc: "
                                                   "'mps2-an386' (Cortex-M4, emulated by qemu-system-arm)")] = None,
    run: Annotated[Path | None, typer.Option(help="then run the firmware under qemu on this WAV file (audio "
                                                  "bundles: it prints each keyword it hears) or CSV of readings "
                                                  "(sensor bundles: a verdict per window)")] = None,
    package: Annotated[list[str] | None, typer.Option(help="also export the sources as an 'arduino' library "
                                                          "and/or a 'cmake' package (repeatable)")] = None,
) -> None:
    """Compile an int8 bundle to dependency-free C99 with a static memory plan (tier 1: microcontrollers).

    Example: edgewise compile runs/cnn-mcu/bundle --out runs/cnn-c
    Example: edgewise compile runs/kws/bundle --out runs/kws-c --board mps2-an386 --run talk.wav
    Example: edgewise compile runs/vib-mcu/bundle --out runs/vib-c --board mps2-an386 --run motor.csv
    """
    from edgewise.codegen.compile import compile_bundle
    from edgewise.codegen.toolchain import check_board
    from edgewise.targets import load_target

    profile = load_target(target)
    if board is not None:  # before any work
        check_board(board)
    if run is not None and board is None:
        raise EdgewiseError("--run needs --board (the firmware to run)")
    if run is not None and not run.is_file():
        raise EdgewiseError(f"{run} not found")
    compiled = compile_bundle(bundle, out, profile, update_bundle=update_bundle, packages=tuple(package or ()))
    f = compiled.figures()
    table = Table(title=f"{bundle} -> C99 for {profile.name}")
    for col in ("ops", "MACs", "arena (RAM)", "lower bound", "planner", "weights (flash)"):
        table.add_column(col)
    table.add_row(str(f["ops"]), f"{f['macs']:,}", f"{f['arena_bytes']:,} B", f"{f['arena_lower_bound_bytes']:,} B",
                  f["planner"], f"{f['constants_bytes']:,} B")
    out_console.print(table)
    out_console.print(f"wrote {out}/: " + ", ".join(sorted(compiled.sources)) + ", memory.json", soft_wrap=False)
    for kind in package or ():
        out_console.print(f"{kind}: {out / kind}/ (" + ("library.properties, src/, examples/" if kind == "arduino"
                                                       else "CMakeLists.txt, include/, src/; target edgewise::<name>")
                          + ")")
    from edgewise.codegen.toolchain import host_command

    out_console.print("build: " + " ".join(host_command(out, Path("model"), ["-std=c99", "-O2"])))
    if update_bundle:
        out_console.print(f"bundle {bundle} now carries c/ and its figures (manifest artifacts.c)")
    if board is not None:
        from edgewise.codegen.toolchain import build_firmware, run_qemu

        if run is not None and not {"ew_stream.c", "ew_sensor.c"} & set(compiled.sources):
            raise EdgewiseError("--run streams a WAV file (an audio front end) or a CSV of readings (a spectral "
                                "front end): this bundle declares neither")
        elf, sizes = build_firmware(out, board)
        out_console.print(f"firmware: {elf} for {board}\n  model, kernels{', front end' if compiled.frontend else ''}: "
                          f"flash {sizes['text'] + sizes['data']:,} B, static RAM {sizes['bss'] + sizes['data']:,} B")
        if run is not None:
            out_console.print(f"running {elf.name} on an emulated {board} with {run}:")
            heard = run_qemu(elf, args=[str(run.resolve())])
            if "ew_sensor.c" in compiled.sources:
                out_console.print("window end (s), verdict, score:", highlight=False)
            out_console.print(heard.rstrip() or "(nothing heard)", highlight=False)


@app.command("import")
def import_model(
    model: Annotated[Path, typer.Argument(help="a .onnx file, or a torch .pt holding a whole nn.Module")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .onnx path")],
    input_shape: Annotated[str | None, typer.Option(help="sample shape without batch, e.g. 3,32,32 (torch only)")] = None,
    opset: Annotated[int, typer.Option(help="upgrade ONNX models older than this opset")] = 13,
    arch: Annotated[str | None, typer.Option(help="zoo architecture a torch state_dict is for (mlp, cnn, dscnn, "
                                                  "cnn1d, mobilenetv3-small)")] = None,
    classes: Annotated[int | None, typer.Option(help="classes of that architecture (default: from the weights)")] = None,
    width: Annotated[float, typer.Option(help="width multiplier of that architecture")] = 1.0,
    trust_pickle: Annotated[bool, typer.Option(help="load a whole pickled nn.Module: this runs code from the "
                                                    "file, so only for files you trust")] = False,
) -> None:
    """Bring a third-party model in: check an ONNX file (upgrading its opset) or export a torch module.

    Example: edgewise import classifier.onnx --out models/cls.onnx
    """

    from edgewise.modelio import default_opset, inputs, load_onnx, outputs, upgrade_opset

    if model.suffix.lower() in (".pt", ".pth"):
        if not input_shape:
            raise EdgewiseError("torch models need --input-shape, e.g. --input-shape 3,32,32")
        try:
            shape = tuple(int(d) for d in input_shape.split(","))
        except ValueError as e:
            raise EdgewiseError(f"--input-shape must be comma-separated integers, got {input_shape!r}") from e
        from edgewise.zoo.export import import_torch

        out.parent.mkdir(parents=True, exist_ok=True)
        m = import_torch(model, shape, out, arch=arch, classes=classes, width=width, trust_pickle=trust_pickle)
    else:
        from edgewise.fsutil import atomic_write

        m = upgrade_opset(load_onnx(model), opset)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, m.SerializeToString())
    ins = ", ".join(f"{s.name}{list(s.shape)}" for s in inputs(m))
    outs = ", ".join(f"{s.name}{list(s.shape)}" for s in outputs(m))
    out_console.print(f"imported {model} -> {out}: opset {default_opset(m)}, {len(m.graph.node)} nodes, "
                      f"inputs {ins}, outputs {outs}")


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="where runs, bundles and reports go")] = Path("demo-out"),
    epochs: Annotated[int, typer.Option(help="training epochs for the digits CNN")] = 25,
) -> None:
    """The whole loop on bundled data: train a CNN on digits, optimize it for mcu-256k and edge-node,
    compile the MCU bundle to C, benchmark fp32 vs optimized side by side, write bundles and HTML reports.

    Example: edgewise quickstart --out demo-out
    """

    from edgewise.optimize.pipeline import optimize as run_optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.profile.bench import bench as run_bench
    from edgewise.targets import load_target

    start = time.perf_counter()
    out_console.rule("[bold]1/4 train: cnn on scikit-learn digits")
    _train("cnn", "digits", out / "train", epochs, 1.0, 0)
    outcomes = {}
    for i, t in enumerate(("mcu-256k", "edge-node")):
        out_console.rule(f"[bold]2/4 optimize for {t}")
        with _SearchProgress(f"optimizing for {t}") as sp:
            outcomes[t] = run_optimize(out / "train", "digits", load_target(t), out / t, SearchOptions(),
                                       name="digits-cnn", log=sp.log, progress=sp.progress)
        _print_search(outcomes[t])
        if outcomes[t].bundle is None:
            raise EdgewiseError(outcomes[t].result.why)
    out_console.rule("[bold]3/4 compile the mcu-256k bundle to C (tier 1)")
    from edgewise.codegen.compile import compile_bundle

    compiled = compile_bundle(out / "mcu-256k" / "bundle", out / "mcu-256k-c", load_target("mcu-256k"))
    f = compiled.figures()
    out_console.print(f"{f['ops']} ops, {f['macs']:,} MACs; arena {f['arena_bytes']:,} B RAM (lower bound "
                      f"{f['arena_lower_bound_bytes']:,} B), weights {f['constants_bytes']:,} B flash -> {out / 'mcu-256k-c'}")
    out_console.rule("[bold]4/4 benchmark fp32 vs optimized (same machine, same run)")
    models = [("fp32 trained", out / "train")] + [(t, out / t / "bundle") for t in outcomes]
    loaded, reference = _load_models(models, "digits")
    with console.status("[bold]benchmarking"):
        rows = run_bench([(n, m) for n, m, _ in loaded], loaded[0][2], load_target("edge-node"), runs=200,
                         reference=reference)
    table = Table(title="digits test split; ms = batch-1 p50, one thread, this machine", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "accuracy", "size", "smaller", "ms", "speed", "peak mem"):
        table.add_column(col, no_wrap=True, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], _pct(r["accuracy"]), _kb(r["size_bytes"]), f"{r['size_ratio']:.2f}x",
                      f"{r['latency_1t']['p50_ms']:.3f}", f"{r['speedup_1t']:.2f}x",
                      _kb(r["peak_memory"]["rss_delta_bytes"]))
    out_console.print(table)
    if reference:
        out_console.print("accuracy of " + ", ".join(sorted(reference)) + " is scored with int8 reference semantics "
                          "(as an MCU's integer kernels compute); latency is ONNX Runtime's on this machine")
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    out_console.rule("[bold]done")
    for t, o in outcomes.items():
        out_console.print(f"{t:10s} bundle {o.bundle}   report {o.out / 'report.html'}")
    out_console.print(f"C sources  {out / 'mcu-256k-c'}   (gcc -std=c99 -O2 *.c builds the demo program)")
    out_console.print(f"benchmark  {out / 'bench.json'}   (took {time.perf_counter() - start:.0f} s)")
