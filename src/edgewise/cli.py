"""The `edgewise` command: a thin shell over the Python API, one verb per lifecycle step."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from edgewise.cli_fleet import device_app, federate_app, fleet_app, keys_app
from edgewise.errors import EdgewiseError

app = typer.Typer(help="edgewise: train, optimize, benchmark and package AI models for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
bundle_app = typer.Typer(help="Inspect, verify, sign and split bundles (model.onnx + manifest.json).", no_args_is_help=True)
targets_app = typer.Typer(help="List and show device target profiles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
app.add_typer(targets_app, name="targets")
app.add_typer(keys_app, name="keys")
app.add_typer(fleet_app, name="fleet")
app.add_typer(device_app, name="device")
app.add_typer(federate_app, name="federate")
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)


def _kb(n: float | None) -> str:
    return "-" if n is None else (f"{n / 1024:,.1f} KB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MB")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _train(model: str, data: str, out: Path, epochs: int, width: float, seed: int) -> Any:
    from edgewise.data import load_splits
    from edgewise.zoo import TrainConfig
    from edgewise.zoo import train as train_model

    splits = load_splits(data, seed=seed)
    cfg = TrainConfig(epochs=epochs, seed=seed)
    with Progress(TextColumn("[bold]training {task.fields[arch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=cfg.epochs_for(len(splits.train)), arch=model, status="")

        def on_epoch(epoch: int, total: int, m: dict[str, float]) -> None:
            progress.update(task, completed=epoch, total=total,
                            status=f"loss {m['loss']:.3f}  val {m['val_accuracy'] * 100:.1f}%")

        trained = train_model(model, splits, cfg, width=width, on_epoch=on_epoch)
    from edgewise.fsutil import atomic_dir

    with atomic_dir(out) as tmp:
        trained.save(tmp)
    out_console.print(f"trained [bold]{model}[/] on {data}: {trained.params:,} params, "
                      f"val {_pct(trained.metrics['val_accuracy'])}, test {_pct(trained.metrics['test_accuracy'])}")
    out_console.print(f"wrote {out}/model.onnx, checkpoint.pt, train.json")
    return trained


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo architecture: mlp, cnn, dscnn, cnn1d, mobilenetv3-small")],
    data: Annotated[str, typer.Option("--data", "-d", help="digits, digits:64, basicmotions, textlines, or a .npz/.csv file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (model.onnx, checkpoint.pt, train.json)")],
    epochs: Annotated[int, typer.Option(help="training epochs (small sets get more, to reach 300 steps)")] = 30,
    width: Annotated[float, typer.Option(help="channel width multiplier")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed for the split and training")] = 0,
) -> None:
    """Train a zoo model on DATA, evaluate it on the test split, and export ONNX.

    Example: edgewise train --model cnn --data digits --out runs/cnn
    """
    _train(model, data, out, epochs, width, seed)


class _SearchProgress:
    """One line per step (`log`), and a bar with an ETA for each step whose amount of work is known."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                            transient=True)
        self.tasks: dict[str, Any] = {}
        self.start = time.monotonic()

    def __enter__(self) -> _SearchProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def log(self, msg: str) -> None:
        self.bar.console.print(f"[dim]{time.monotonic() - self.start:5.0f}s[/] {msg}", highlight=False)

    def progress(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            for t in self.tasks.values():
                self.bar.update(t, visible=False)
            self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(self.tasks[what], completed=done, total=total, visible=done < total)


def _short(cid: str) -> str:
    return cid.removeprefix("baseline-")


def _verdict(c: Any, chosen: Any) -> str:
    """Short enough for one or two lines at 80 columns; report.html has every reason in full."""
    if c.status != "ok":
        reason = c.reason if len(c.reason) <= 70 else c.reason[:67] + "..."
        return "[red]rejected[/]: " + escape(reason)
    if c.violations:
        return escape("; ".join(c.violations))
    if c is chosen:
        return "[green]chosen[/]"
    return "fits, slower than start" if c.metrics.get("slower_than_start") else "fits"


def _print_search(outcome: Any) -> None:
    """The candidate table: fits 80 columns (details are in report.html); the size column is what the
    decision used (flash on MCUs), and an estimated latency is marked as such."""
    r = outcome.result
    estimated = not r.target.runs_onnxruntime
    kind = r.baseline.metrics.get("fidelity_kind", "score").replace("_agreement", "").replace("_", " ")
    task = f", task {r.task.name}" if r.task else ""
    table = Table(title=f"{outcome.report['model']} on {r.target.name}{task}", title_justify="left",
                  caption=("~ latency estimated from MACs, not measured; " if estimated else "")
                  + "full table: report.html", caption_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("candidate", no_wrap=True, overflow="ellipsis", max_width=26)
    table.add_column(kind[:9], justify="right", no_wrap=True)
    table.add_column("drop", justify="right", no_wrap=True)
    table.add_column("flash" if estimated else "size", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("verdict", overflow="fold", ratio=1)
    for c in [r.baseline] + r.candidates:
        m = c.metrics
        size = m.get("flash_bytes", m.get("size_bytes"))
        ms = "-" if "latency_p50_ms" not in m else ("~" if estimated else "") + f"{m['latency_p50_ms']:.2f}"
        table.add_row(_short(c.id), _pct(m.get("score")),
                      "-" if "accuracy_drop_points" not in m else f"{m['accuracy_drop_points']:+.2f}",
                      _kb(size), ms, _verdict(c, r.chosen))
    out_console.print(table)
    if r.not_tried:
        out_console.print(f"not tried (time budget): {', '.join(_short(c) for c in r.not_tried)}")
    for note in r.notes:
        if not note.startswith("time budget"):
            out_console.print(f"[dim]note:[/] {note}", highlight=False)
    if r.chosen is None:
        for c in outcome.report.get("closest", []):
            out_console.print(f"closest: {_short(c['id'])} lacks " + "; ".join(c["lacks"]))
        return
    f = r.final
    out_console.print(f"[bold green]chosen[/] {r.why}")
    lat = "estimated p50" if estimated else "p50"
    out_console.print(f"test split: {f['fidelity_kind'].replace('_', ' ')} {_pct(f['baseline_accuracy'])} -> "
                      f"{_pct(f['accuracy'])}, size {_kb(f['baseline_size_bytes'])} -> {_kb(f['size_bytes'])}, "
                      f"{lat} {f['baseline_latency_p50_ms']:.3f} -> {f['latency_p50_ms']:.3f} ms")


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="an .onnx file, a `train` output directory, or a bundle")],
    target: Annotated[str, typer.Option("--target", "-t", help="mcu-256k, cortex-a, edge-node, edge-server or a .toml")],
    data: Annotated[str, typer.Option("--data", "-d", help="calibration/validation/test data (bundled name or file)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory: bundle/, report.html, report.json")],
    max_accuracy_drop: Annotated[float, typer.Option(help="tolerated accuracy drop, percentage points")] = 1.0,
    torch_passes: Annotated[bool, typer.Option(help="try structured pruning and distillation (zoo models)")] = True,
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
    labels: Annotated[Path | None, typer.Option(help="class names, one per line (e.g. a detector's)")] = None,
) -> None:
    """Try recipes for TARGET, keep the Pareto front, and bundle the best model that fits.

    DATA for a model with several inputs is an .npz with one array per input name, samples stacked
    on a new leading axis. Fidelity is measured in the task's terms (accuracy with labels, else
    agreement with the starting model: top-1, detection mAP@0.5, map IoU, CTC character error rate,
    or output cosine).

    Example: edgewise optimize runs/cnn --target mcu-256k --data digits --out runs/cnn-mcu
    """
    from edgewise.optimize.pipeline import optimize as run_optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target

    profile = load_target(target)
    opts = SearchOptions(max_accuracy_drop=max_accuracy_drop, torch_passes=torch_passes,
                         calibration_samples=calibration_samples, only=tuple(recipe or ()), task=task,
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


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EdgewiseError(f"cannot read {path}: {e}") from e
    unknown = set(doc) - {"image", "postprocess"}
    if unknown:
        raise EdgewiseError(f"{path}: unknown sections {', '.join(sorted(unknown))} (use [image] and [postprocess])")
    return doc


def _read_labels(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise EdgewiseError(f"cannot read labels from {path}: {e}") from e
    if not names:
        raise EdgewiseError(f"{path} holds no class names")
    return names


def _load_models(models: list[tuple[str, Path]], splits: Any) -> tuple[list[tuple[str, Any, Any]], set[str]]:
    """Load each model and fit the data to it; bundles for int8-only targets are scored as the device would."""
    from edgewise.bundle import read_bundle
    from edgewise.source import fit_data, load_source
    from edgewise.targets import load_target

    loaded, reference = [], set()
    for label, path in models:
        src, sp = fit_data(load_source(path), splits)
        loaded.append((label, src.model, sp))
        if (path / "manifest.json").is_file():
            target = read_bundle(path).target
            try:
                if load_target(target).int8_only:
                    reference.add(label)
            except EdgewiseError:
                pass  # a bundle for a target this install does not know: score it as ONNX Runtime runs it
    return loaded, reference


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx files, bundles or train directories; the first is the reference")],
    data: Annotated[str, typer.Option("--data", "-d", help="bundled dataset name or file; the test split is used")],
    target: Annotated[str, typer.Option(help="target whose energy per MAC prices the estimate")] = "cortex-a",
    batch: Annotated[int, typer.Option(help="larger batch for the throughput figure")] = 32,
    runs: Annotated[int, typer.Option(help="latency runs per model after warm-up")] = 300,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures as JSON")] = None,
) -> None:
    """Measure models side by side: latency p50/p90/p99, throughput, size, peak memory, accuracy, energy.

    Example: edgewise bench runs/cnn runs/cnn-mcu/bundle --data digits
    """
    from edgewise.data import load_splits
    from edgewise.profile.bench import bench as run_bench
    from edgewise.targets import load_target

    profile = load_target(target)
    splits = load_splits(data)
    loaded, reference = _load_models([(str(p), p) for p in models], splits)
    sp = loaded[0][2]
    with console.status("[bold]benchmarking"):
        rows = run_bench([(n, m) for n, m, _ in loaded], sp, profile, batch=batch, runs=runs, reference=reference)
    def short(name: str) -> str:  # a path's last two parts are what tells the rows apart
        parts = Path(name).parts
        return "/".join(parts[-2:]) if len(parts) > 1 else name

    kind = rows[0].get("fidelity_kind", "accuracy").replace("_agreement", "").replace("_", " ")
    table = Table(title=f"benchmark on {data} (test split, {rows[0]['test_samples']} samples): latency",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", kind[:9], "size", "p50 1t", "p99 1t", f"p50 {rows[0]['all_cores']}t", "speed", "peak mem"):
        table.add_column(col, no_wrap=col != "model", overflow="fold", justify="left" if col == "model" else "right")
    for r in rows:
        l1, la = r["latency_1t"], r["latency_all"]
        table.add_row(short(r["model"]), _pct(r.get("fidelity", r["accuracy"])), _kb(r["size_bytes"]),
                      f"{l1['p50_ms']:.3f}", f"{l1['p99_ms']:.3f}", f"{la['p50_ms']:.3f}", f"{r['speedup_1t']:.2f}x",
                      _kb(r["peak_memory"]["rss_delta_bytes"]))
    out_console.print(table)
    table = Table(title="throughput and energy", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "thr b1", f"thr b{batch}", "MACs", "energy*"):
        table.add_column(col, no_wrap=col != "model", overflow="fold", justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(short(r["model"]), f"{r['throughput_b1_1t']:,.0f}/s", f"{r[f'throughput_b{batch}_1t']:,.0f}/s",
                      f"{r['macs']:,}", f"{r['energy_uj_estimate']:.3f} µJ")
    out_console.print(table)
    out_console.print(f"latency in ms at batch 1; * energy is an estimate: MACs x {profile.energy_pj_per_mac} pJ/MAC "
                      f"({profile.name}); peak mem = RSS high-water mark of a fresh process (ORT included)")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
        out_console.print(f"wrote {json_out}")


@app.command("compile")
def compile_cmd(
    bundle: Annotated[Path, typer.Argument(help="an int8 bundle (from `edgewise optimize --target mcu-256k`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for model.c/.h, the kernels and main.c")],
    target: Annotated[str, typer.Option("--target", "-t", help="target whose RAM/flash budget must hold")] = "mcu-256k",
    update_bundle: Annotated[bool, typer.Option(help="also record the C sources and figures in the bundle")] = True,
) -> None:
    """Compile an int8 bundle to dependency-free C99 with a static memory plan (tier 1: microcontrollers).

    Example: edgewise compile runs/cnn-mcu/bundle --out runs/cnn-c
    """
    from edgewise.codegen.compile import compile_bundle
    from edgewise.targets import load_target

    profile = load_target(target)
    compiled = compile_bundle(bundle, out, profile, update_bundle=update_bundle)
    f = compiled.figures()
    table = Table(title=f"{bundle} -> C99 for {profile.name}")
    for col in ("ops", "MACs", "arena (RAM)", "lower bound", "planner", "weights (flash)"):
        table.add_column(col)
    table.add_row(str(f["ops"]), f"{f['macs']:,}", f"{f['arena_bytes']:,} B", f"{f['arena_lower_bound_bytes']:,} B",
                  f["planner"], f"{f['constants_bytes']:,} B")
    out_console.print(table)
    out_console.print(f"wrote {out}/: " + ", ".join(sorted(compiled.sources)) + ", memory.json")
    out_console.print(f"build: gcc -std=c99 -O2 -o model {out}/model.c {out}/ew_kernels.c {out}/main.c")
    if update_bundle:
        out_console.print(f"bundle {bundle} now carries c/ and its figures (manifest artifacts.c)")


agent_app = typer.Typer(help="Run the on-device agent (inference service, cascade, store-and-forward).",
                        invoke_without_command=True)
app.add_typer(agent_app, name="agent")


@agent_app.callback()
def agent(
    ctx: typer.Context,
    bundle: Annotated[list[Path] | None, typer.Option("--bundle", "-b", help="bundle to serve (repeatable)")] = None,
    tier: Annotated[str | None, typer.Option(help="endpoint, node or server")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="queue, received events and audit log live here")] = None,
    upstream: Annotated[str | None, typer.Option(help="URL of the tier above, e.g. http://127.0.0.1:8081")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (loopback unless --host says otherwise)")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind")] = None,
    escalate: Annotated[str | None, typer.Option(help="privacy: what unsure samples send upstream: 'none' (default), "
                                                      "'raw' inputs, or 'features' (the model's embedding, to the "
                                                      "tier above's <model>-tail; see `bundle split`)")] = None,
    runtime: Annotated[str | None, typer.Option(help="'onnxruntime' (default) or 'c': run int8 bundles as the "
                                                     "generated C, through ctypes (needs gcc)")] = None,
    mqtt: Annotated[str | None, typer.Option(help="MQTT broker HOST:PORT: readings on edgewise/<tier>/in/<model>, "
                                                  "results on .../out/<model>")] = None,
    config: Annotated[Path | None, typer.Option(help="agent.toml: privacy, cascade, queue and models sections")] = None,
    fleet_poll: Annotated[float | None, typer.Option(help="poll the fleet for model updates every ~N seconds "
                                                          "(after `edgewise device enroll`)")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="release public key(s) OTA bundles must be signed with")] = None,
    samples_max_mb: Annotated[float | None, typer.Option(help="labelled samples kept for federated training "
                                                              "(POST /v1/samples), at most this many MB; 0 = off "
                                                              "[default: 64]")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="NAME=SOURCE: a video file, rtsp:// URL or /dev/videoN "
                                                          "to answer frame by frame (repeatable); answers go "
                                                          "through the queue, frames never leave")] = None,
    fps: Annotated[float | None, typer.Option(help="frames a second each stream is sampled at [default: 5]")] = None,
    stream_model: Annotated[str | None, typer.Option(help="the model that answers the streams (default: the only "
                                                          "one served)")] = None,
) -> None:
    """Serve bundles over HTTP (POST /predict, POST /v1/samples, GET /health, GET /metrics, docs at /docs).

    Example: edgewise agent --bundle runs/cnn-mcu/bundle --tier node --data-dir /var/lib/edgewise --port 8081
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgewise.agent.runner import AgentConfig, serve

    overrides = {"bundles": bundle or None, "tier": tier, "data_dir": data_dir, "upstream": upstream, "port": port,
                 "host": host, "escalate": escalate, "runtime": runtime, "mqtt": mqtt, "fleet_poll_s": fleet_poll,
                 "trust": trust or None, "samples_max_mb": samples_max_mb, "streams": stream or None,
                 "stream_fps": fps, "stream_model": stream_model}
    if config is not None:
        cfg = AgentConfig.from_toml(config, **overrides)
    else:
        cfg = AgentConfig(**{k: v for k, v in overrides.items() if v is not None})
    if not cfg.bundles and cfg.tier != "server" and cfg.fleet_poll_s <= 0:
        raise EdgewiseError("an endpoint or node agent needs at least one --bundle (or --fleet-poll to get one)")
    console.print(f"edgewise agent ({cfg.tier}) on http://{cfg.host}:{cfg.port} serving "
                  f"{', '.join(str(b) for b in cfg.bundles) or 'no models'}; data in {cfg.data_dir}")
    serve(cfg)


@agent_app.command("audit")
def agent_audit(data_dir: Annotated[Path, typer.Option(help="the agent's data directory")] = Path("agent-data")) -> None:
    """Print what left the device: each upstream send with its fields, item count, bytes and destination.

    Example: edgewise agent audit --data-dir /var/lib/edgewise
    """
    from datetime import datetime

    from edgewise.agent.forward.audit import AuditLog

    if not (data_dir / "audit.db").is_file():
        raise EdgewiseError(f"no audit log in {data_dir}")
    table = Table(title=f"upstream sends recorded in {data_dir}")
    for col in ("time", "kind", "status", "destination", "fields", "items", "bytes"):
        table.add_column(col, overflow="fold")
    for r in AuditLog(data_dir / "audit.db").rows():
        status = r["status"] + (" (retry)" if r["retry"] else "")
        table.add_row(datetime.fromtimestamp(r["ts"]).isoformat(timespec="seconds"), r["kind"], status,
                      r["destination"], ", ".join(r["fields"]), str(r["items"]), f"{r['bytes']:,}")
    out_console.print(table)


cascade_app = typer.Typer(help="Plan the cascade across tiers.", no_args_is_help=True)
app.add_typer(cascade_app, name="cascade")


@cascade_app.command("calibrate")
def cascade_calibrate(
    bundle: Annotated[list[Path], typer.Option("--bundle", "-b", help="one bundle per tier, bottom (endpoint) first")],
    data: Annotated[str, typer.Option("--data", "-d", help="labelled data; thresholds come from its validation split")],
    out_dir: Annotated[Path, typer.Option(help="writes endpoint.toml / node.toml agent configs here")] = Path("cascade"),
    max_drop: Annotated[float, typer.Option(help="tolerated end-to-end accuracy drop vs the top tier, points")] = 0.5,
    escalate: Annotated[str, typer.Option(help="what the configs let unsure samples send upstream: 'none' (the "
                                               "privacy default: thresholds then only decide what is marked "
                                               "unsure), 'raw' or 'features'")] = "none",
) -> None:
    """Choose each tier's confidence threshold so the cascade forwards as little as possible while its
    accuracy stays within --max-drop of the top tier alone; write them into agent configs.

    Example: edgewise cascade calibrate -b runs/e/bundle -b runs/n/bundle -b runs/s/bundle --data digits
    """
    from edgewise.agent.serve.calibrate import calibrate, simulate
    from edgewise.agent.serve.cascade import probabilities
    from edgewise.data import load_splits
    from edgewise.profile import make_session, run_model
    from edgewise.source import fit_data, load_source

    if len(bundle) < 2:
        raise EdgewiseError("calibration needs at least two tiers (--bundle given twice or more)")
    if escalate not in ("none", "raw", "features"):
        raise EdgewiseError(f"--escalate must be none, raw or features, got {escalate!r}")
    splits = load_splits(data)
    if splits.val.y is None:
        raise EdgewiseError("calibration needs labelled data")
    probs = {"val": [], "test": []}
    for b in bundle:
        src, sp = fit_data(load_source(b), splits)
        sess = make_session(src.model)
        for part in ("val", "test"):
            probs[part].append(probabilities(run_model(sess, getattr(sp, part).x)))
    plan = calibrate(probs["val"], splits.val.y, max_drop)
    tier_names = ["endpoint", "node", "server"][: len(bundle)] if len(bundle) <= 3 else [f"tier{i}" for i in range(len(bundle))]
    tier, pred = simulate(probs["test"], splits.test.y, plan.thresholds)
    table = Table(title=f"cascade on {data}: thresholds from validation, checked on the test split")
    for col in ("tier", "threshold", "answers (val)", "answers (test)", "accuracy of its answers (test)"):
        table.add_column(col)
    for t, name in enumerate(tier_names):
        mask = tier == t
        acc = f"{(pred[mask] == splits.test.y[mask]).mean() * 100:.2f}%" if mask.any() else "-"
        thr = f"{plan.thresholds[t]:.4f}" if t < len(plan.thresholds) else "(answers the rest)"
        table.add_row(name, thr, f"{plan.shares[t] * 100:.1f}%", f"{mask.mean() * 100:.1f}%", acc)
    out_console.print(table)
    test_top = (probs["test"][-1].argmax(1) == splits.test.y).mean()
    out_console.print(f"end-to-end accuracy: validation {plan.accuracy * 100:.2f}% (top tier alone "
                      f"{plan.top_accuracy * 100:.2f}%), test {(pred == splits.test.y).mean() * 100:.2f}% "
                      f"(top tier alone {test_top * 100:.2f}%)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for t, name in enumerate(tier_names[:-1]):
        path = out_dir / f"{name}.toml"
        path.write_text(f'# written by `edgewise cascade calibrate` on {data}\ntier = "{name if name in ("endpoint", "node") else "node"}"\n'
                        f'bundles = ["{bundle[t]}"]\n\n[privacy]\n# "none" keeps inputs on the device (the default); '
                        f'"raw" or "features" lets the cascade forward unsure ones\nescalate = "{escalate}"\n\n[cascade]\n'
                        f"default_threshold = {plan.thresholds[t]:.6f}\n")
        out_console.print(f"wrote {path}")


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
    import onnx

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
        m = upgrade_opset(load_onnx(model), opset)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        onnx.save(m, str(tmp))
        tmp.replace(out)
    ins = ", ".join(f"{s.name}{list(s.shape)}" for s in inputs(m))
    outs = ", ".join(f"{s.name}{list(s.shape)}" for s in outputs(m))
    out_console.print(f"imported {model} -> {out}: opset {default_opset(m)}, {len(m.graph.node)} nodes, "
                      f"inputs {ins}, outputs {outs}")


@bundle_app.command("verify")
def bundle_verify(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    key: Annotated[list[Path] | None, typer.Option("--key", "-k", help="trusted public key (.pub) or a directory "
                                                                       "of them; repeatable. Checks the signature")] = None,
) -> None:
    """Check every file's size and sha256 against the manifest, and with --key the Ed25519 signature
    (non-zero exit and the reason on any mismatch).

    Example: edgewise bundle verify runs/cnn-mcu/bundle --key keys/release.pub
    """
    from edgewise.bundle import verify_bundle

    if key:
        from edgewise.bundle.signing import TrustStore, verify_signed_bundle

        man, kid = verify_signed_bundle(path, TrustStore.load(key))
        out_console.print(f"[green]ok[/] {man.name} {man.version} for {man.target}: {len(man.files)} file(s) "
                          f"verified, signed by key {kid}")
        return
    man = verify_bundle(path)
    signed = (path / "signature").exists()
    out_console.print(f"[green]ok[/] {man.name} {man.version} for {man.target}: {len(man.files)} file(s) verified; "
                      + ("signature NOT checked (pass --key to check it)" if signed else "not signed"))


@bundle_app.command("sign")
def bundle_sign(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Ed25519 private key (from `edgewise keys gen`)")],
    golden: Annotated[int, typer.Option(help="golden input/output pairs to add for the device self-test")] = 4,
) -> None:
    """Add golden self-test pairs (if missing), then sign the canonical manifest bytes with Ed25519.

    Example: edgewise bundle sign runs/cnn-mcu/bundle --key keys/release.key
    """
    from edgewise.bundle.selftest import add_golden
    from edgewise.bundle.signing import load_private, sign_bundle

    private = load_private(key)
    if golden > 0:
        add_golden(path, golden)
    sig = sign_bundle(path, private)
    out_console.print(f"signed {path} with key {sig['key_id']}")


@bundle_app.command("split")
def bundle_split(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the tail bundle")],
    at: Annotated[str | None, typer.Option(help="tensor to split at (default: the input of the last Gemm/MatMul)")] = None,
) -> None:
    """Write the tail of a bundle's model as a bundle named <model>-tail, for features-mode escalation:
    the device sends the embedding at the split point instead of the raw input, the tier above runs the tail.

    Example: edgewise bundle split runs/cnn/bundle --out runs/cnn-tail
    """
    from edgewise.bundle.split import split_bundle

    m = split_bundle(path, out, at)
    feat = m.artifacts["split"]["features"]
    out_console.print(f"wrote {out}: {m.name} {m.version}, input {feat['name']}{feat['shape']}")


@bundle_app.command("inspect")
def bundle_inspect(path: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Print a bundle's manifest: model, target, inputs/outputs, recipe and metrics.

    Example: edgewise bundle inspect runs/cnn-mcu/bundle
    """
    from edgewise.bundle import read_bundle

    out_console.print_json(read_bundle(path).to_json())


@targets_app.command("list")
def targets_list() -> None:
    """List the built-in target profiles.

    Example: edgewise targets list
    """
    from edgewise.targets import available

    table = Table(title="built-in targets")
    for col in ("name", "tier", "RAM", "flash", "latency budget", "precisions", "objective"):
        table.add_column(col, overflow="fold")
    for t in available():
        table.add_row(t.name, t.tier, _kb(t.ram_bytes), _kb(t.flash_bytes), f"{t.latency_budget_ms:g} ms",
                      ", ".join(t.precisions), t.objective)
    out_console.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="built-in name or path to a .toml")]) -> None:
    """Show one target profile in full.

    Example: edgewise targets show mcu-256k
    """
    from dataclasses import asdict

    from edgewise.targets import load_target

    out_console.print_json(json.dumps(asdict(load_target(name))))


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="where runs, bundles and reports go")] = Path("demo-out"),
    epochs: Annotated[int, typer.Option(help="training epochs for the digits CNN")] = 25,
) -> None:
    """The whole loop on bundled data: train a CNN on digits, optimize it for mcu-256k and edge-node,
    compile the MCU bundle to C, benchmark fp32 vs optimized side by side, write bundles and HTML reports.

    Example: edgewise quickstart --out demo-out
    """
    import time

    from edgewise.data import load_splits
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
    splits = load_splits("digits")
    models = [("fp32 trained", out / "train")] + [(t, out / t / "bundle") for t in outcomes]
    loaded, reference = _load_models(models, splits)
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


def main() -> None:
    """Entry point: every EdgewiseError becomes one line on stderr and exit code 1, never a traceback."""
    try:
        app(prog_name="edgewise")
    except EdgewiseError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted; nothing was left half-written")
        sys.exit(130)
    except OSError as e:  # a full or read-only disk, a path that is a file where a directory is due, ...
        where = f" {e.filename}" if e.filename else ""
        console.print(f"[bold red]error:[/] cannot use{where}: {e.strerror or e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # a bug, not bad input: still one line, with a way to see the traceback
        if os.environ.get("EDGEWISE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] internal error ({type(e).__name__}: {e}); "
                      "rerun with EDGEWISE_DEBUG=1 for the traceback and please report it", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
