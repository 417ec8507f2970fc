"""What every group of verbs shares: the consoles, number formats, the search progress and table, and
the small readers of option files."""

from __future__ import annotations

import re
import textwrap
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

from edgewise.errors import DataError, EdgewiseError

console = Console(stderr=True, soft_wrap=True)


out_console = Console(soft_wrap=True)


def _kb(n: float | None) -> str:
    """Bytes in the unit that keeps the figure short (a table column stays under 9 characters)."""
    if n is None:
        return "-"
    for unit, scale in (("KB", 2**10), ("MB", 2**20)):
        if abs(n) < 1000 * scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**30:,.1f} GB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


Window = Annotated[float | None, typer.Option(help="sensor-log CSV: window length in ms (default 2000)")]


Stride = Annotated[float | None, typer.Option(help="sensor-log CSV: ms between window starts (default half a "
                                                  "window)")]


def with_windows(data: str, window: float | None, stride: float | None) -> str:
    """DATA with --window/--stride folded into a sensor log's options (`log.csv:window=...,stride=...`)."""
    if window is None and stride is None:
        return data
    path, _, opts = data.partition(":")
    if not path.lower().endswith(".csv") or not Path(path).is_file():
        raise DataError(f"--window and --stride cut a sensor-log CSV into windows; {data!r} is not one")
    extra = [f"{k}={v:g}" for k, v in (("window", window), ("stride", stride)) if v is not None]
    return f"{path}:{','.join(filter(None, [opts, *extra]))}"


def _train(model: str, data: str, out: Path, epochs: int, width: float, seed: int,
           false_alarm_rate: float | None = None, features: str | None = None) -> Any:
    from edgewise.data import load_splits
    from edgewise.zoo import TrainConfig
    from edgewise.zoo import train as train_model

    splits = load_splits(data, seed=seed)
    cfg = TrainConfig(epochs=epochs, seed=seed)
    with Progress(TextColumn("[bold]training {task.fields[arch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("train", total=cfg.epochs_for(len(splits.train)), arch=model, status="")

        def on_epoch(epoch: int, total: int, m: dict[str, float]) -> None:
            val = (f"val {m['val_accuracy'] * 100:.1f}%" if "val_accuracy" in m else f"val score {-m['val_score']:.3f}"
                   if "val_score" in m else f"val mAP50 {m['val_map50'] * 100:.1f}%")
            progress.update(task, completed=epoch, total=total, status=f"loss {m['loss']:.3f}  {val}")

        trained = train_model(model, splits, cfg, width=width, on_epoch=on_epoch, false_alarm_rate=false_alarm_rate,
                              features=features)
    from edgewise.fsutil import atomic_dir

    with atomic_dir(out) as tmp:
        trained.save(tmp)
    m = trained.metrics
    if "threshold" in m:
        out_console.print(f"trained [bold]{model}[/] on {data}: {trained.params:,} params, anomaly threshold "
                          f"{m['threshold']:.4g}: {_pct(m['false_alarm_target'])} false alarms on normal windows it did not "
                          f"train on ({m.get('calibration', 'validation windows')})")
        out_console.print(_anomaly_line(m))
        out_console.print(f"wrote {out}/model.onnx, checkpoint.pt, train.json")
        return trained
    scores = (f"val {_pct(m['val_accuracy'])}, test {_pct(m['test_accuracy'])}" if "test_accuracy" in m else
              f"val mAP@0.5 {_pct(m['val_map50'])}, test mAP@0.5 {_pct(m['test_map50'])}, "
              f"mAP@0.5:0.95 {_pct(m['test_map50_95'])}")
    out_console.print(f"trained [bold]{model}[/] on {data}: {trained.params:,} params, {scores}")
    out_console.print(f"wrote {out}/model.onnx, checkpoint.pt, train.json")
    return trained


def _anomaly_line(m: dict[str, Any]) -> str:
    """Test figures of an anomaly detector, as far as the test split allows."""
    parts = [f"test: {m.get('test_normal_windows', 0)} normal, {m.get('test_anomaly_windows', 0)} anomalous windows"]
    if "test_auroc" in m:
        parts.append(f"AUROC {m['test_auroc']:.3f}")
    if "test_false_alarm_rate" in m:
        parts.append(f"false alarms {_pct(m['test_false_alarm_rate'])}")
    if "test_detection_rate" in m:
        parts.append(f"detected {_pct(m['test_detection_rate'])}")
    by = m.get("test_detection_by_class") or {}
    line = ", ".join(parts)
    if by:
        line += "\n  detected by class: " + ", ".join(f"{k} {_pct(v)}" for k, v in by.items())
    return line


def print_folded(con: Console, head: str, text: str, indent: int) -> None:
    """`head` (rich markup, `indent` columns wide), then `text` folded to the console's width and indented under
    itself; brackets in `text` are printed as they are."""
    lines = textwrap.wrap(text, max(30, con.width - indent), break_long_words=False, break_on_hyphens=False) or [""]
    con.print(head + escape(("\n" + " " * indent).join(lines)), highlight=False)


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
        """One step, folded to the terminal's width under its own text (not under the time stamp)."""
        stamp = f"{time.monotonic() - self.start:5.0f}s "
        print_folded(self.bar.console, f"[dim]{stamp}[/]", msg, len(stamp))

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
    if c.violations:  # the drop itself is in its own column: the tolerance needs naming only
        return escape("; ".join(re.sub(r"^.+ drop -?[\d.]+ points > (\S+)$", r"over \1 pt", v)
                                for v in c.violations))
    if c is chosen:
        return "[green]chosen[/]"
    return "fits, slower" if c.metrics.get("slower_than_start") else "fits"  # than the starting model


def _print_search(outcome: Any) -> None:
    """The candidate table: fits 80 columns (details are in report.html); the size column is what the
    decision used (flash on MCUs), and an estimated latency is marked as such."""
    r = outcome.result
    estimated = not r.target.runs_onnxruntime
    from edgewise.profile.fidelity import column_label, label

    kind = column_label(r.baseline.metrics.get("fidelity_kind", "score"))
    task = f", task {r.task.name}" if r.task else ""
    table = Table(title=f"{outcome.report['model']} on {r.target.name}{task}", title_justify="left",
                  caption=("~ latency estimated from MACs, not measured; " if estimated else "")
                  + "full table: report.html", caption_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("candidate", no_wrap=True, overflow="ellipsis", max_width=26)
    table.add_column(kind, justify="right", no_wrap=True)
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
        print_folded(out_console, "not tried (time budget): ", ", ".join(_short(c) for c in r.not_tried),
                     len("not tried (time budget): "))
    for note in r.notes:
        if not note.startswith("time budget"):
            print_folded(out_console, "[dim]note:[/] ", note, len("note: "))
    if r.chosen is None:
        for c in outcome.report.get("closest", []):
            print_folded(out_console, "closest: ", f"{_short(c['id'])} lacks " + "; ".join(c["lacks"]),
                         len("closest: "))
        return
    f = r.final
    print_folded(out_console, "[bold green]chosen[/] ", r.why, len("chosen "))
    lat = "estimated p50" if estimated else "p50"
    fmt = (lambda v: f"{v:.3f}") if f["fidelity_kind"] == "auroc" else _pct
    print_folded(out_console, "test split: ", f"{label(f['fidelity_kind'])} {fmt(f['baseline_accuracy'])} "
                 f"-> {fmt(f['accuracy'])}, size {_kb(f['baseline_size_bytes'])} -> {_kb(f['size_bytes'])}, "
                 f"{lat} {f['baseline_latency_p50_ms']:.3f} -> {f['latency_p50_ms']:.3f} ms", len("test split: "))
    if f["fidelity_kind"] == "map50_95":  # the looser figure people also quote, beside the one judged
        out_console.print(f"test split: mAP50 {_pct(f['baseline_fidelity_details']['map50'])} -> "
                          f"{_pct(f['fidelity_details']['map50'])} (against the data's boxes)")
    if "anomaly_threshold" in f:
        out_console.print(f"anomaly threshold {f['anomaly_threshold']:.4g} (scaled to the chosen model's scores); "
                          + _anomaly_line({f"test_{k.removeprefix('anomaly_')}": v for k, v in f.items()
                                           if k.startswith("anomaly_")}))


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EdgewiseError(f"cannot read {path}: {e}") from e
    unknown = set(doc) - {"image", "postprocess"}
    if unknown:
        raise EdgewiseError(f"{path}: unknown sections {', '.join(sorted(unknown))} (use [image] and [postprocess])")
    kws = doc.get("postprocess", {}).get("keyword_spotting")
    if kws is not None:  # checked now rather than after the search
        from edgewise.media.recognize import Smoothing

        try:
            Smoothing.from_dict(kws)
        except EdgewiseError as e:
            raise EdgewiseError(f"{path}: [postprocess] {e}") from e
    return doc


def _read_labels(path: Path) -> list[str]:
    try:
        # ASCII blanks only: a character dictionary's U+3000 (ideographic space) is a character, not padding
        names = [name for line in path.read_text(encoding="utf-8").splitlines() if (name := line.strip(" \t"))]
    except (OSError, UnicodeDecodeError) as e:
        raise EdgewiseError(f"cannot read labels from {path}: {e}") from e
    if not names:
        raise EdgewiseError(f"{path} holds no class names")
    return names


def _load_models(models: list[tuple[str, Path]], data: str) -> tuple[list[tuple[str, Any, Any]], set[str]]:
    """Load each model and fit the data to it (an image set without a size loads at the first model's input
    size); bundles for int8-only targets are scored as the device would."""
    from edgewise.bundle import read_bundle
    from edgewise.data import load_splits
    from edgewise.modelio import image_size
    from edgewise.source import fit_data, load_source
    from edgewise.targets import load_target

    loaded, reference, splits = [], set(), None
    for label, path in models:
        src = load_source(path)
        splits = splits or load_splits(data, size=image_size(src.model))
        src, sp = fit_data(src, splits)
        loaded.append((label, src.model, sp))
        if (path / "manifest.json").is_file():
            target = read_bundle(path).target
            try:
                if load_target(target).int8_only:
                    reference.add(label)
            except EdgewiseError:
                pass  # a bundle for a target this install does not know: score it as ONNX Runtime runs it
    return loaded, reference


out = Console()


Server = Annotated[str, typer.Option(envvar="EDGEWISE_FLEET", help="fleet server URL")]


Token = Annotated[str, typer.Option(envvar="EDGEWISE_ADMIN_TOKEN", help="admin token (or $EDGEWISE_ADMIN_TOKEN)")]


def _client(server: str, token: str):  # type: ignore[no-untyped-def]
    from edgewise.fleet.client import FleetClient

    return FleetClient(server, token)
