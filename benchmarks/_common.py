"""Shared helpers for the benchmark scripts: cached training, and RESULTS.md sections."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "RESULTS.md"
WORK = Path(os.environ.get("EDGEWISE_BENCH_DIR", ROOT.parent / "bench-out"))


def machine() -> str:
    import onnxruntime
    import torch

    from edgewise.profile import cpu

    kind = "VNNI" if isa() == "vnni" else ("AVX2, no VNNI" if "avx2" in cpu.flags() else "?")
    return (f"{cpu.name()} ({kind}), {os.cpu_count()} cores; Python {sys.version.split()[0]}, "
            f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")


def isa() -> str:
    """The kind of x86 CPU a runtime table belongs to: "vnni" (int8 dot-product units) or "avx2"."""
    from edgewise.profile import cpu

    return "vnni" if set(cpu.flags()) & set(cpu.INT8_DOT) else "avx2"


def cpu_flags() -> str:
    """The ISA extensions that decide which int8 kernels win (record them with every figure)."""
    from edgewise.profile import cpu

    return ", ".join(cpu.flags()) or "none of " + ", ".join(cpu.REPORTED)


def trained(arch: str, data: str, epochs: int, width: float = 1.0) -> Path:
    """Train once per (arch, data, epochs, width) and reuse the directory on later runs."""
    from edgewise.data import load_splits
    from edgewise.zoo import TrainConfig, train

    out = WORK / f"{arch}-{data.replace(':', '_')}-e{epochs}-w{width}"
    if not (out / "train.json").is_file():
        print(f"training {arch} on {data} ({epochs} epochs)...", flush=True)
        train(arch, load_splits(data), TrainConfig(epochs=epochs), width=width).save(out)
    return out


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between the markers for `name` in RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(f"updated section '{name}' in {RESULTS}")


def model_rows(json_name: str, models: list[str], budget: float,  # type: ignore[no-untyped-def]
               rows_of, section) -> None:
    """The driver of a per-model benchmark: `rows_of(name, budget)` gives each model's rows, `section(rows,
    budget)` writes RESULTS; --table-only rewrites the table from the last run's JSON."""
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", help=f"default: {', '.join(models)}; naming some reruns only "
                    "those and keeps the last run's rows of the others")
    ap.add_argument("--time-budget", type=float, default=budget)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the last run's JSON")
    args = ap.parse_args()
    out = WORK / json_name
    if args.table_only:
        return section(json.loads(out.read_text()), args.time_budget)
    kept = json.loads(out.read_text()) if args.models and out.exists() else []
    rows = [r for r in kept if r.get("model") not in args.models]
    for name in args.models or models:
        rows += rows_of(name, args.time_budget)
    out.write_text(json.dumps(rows, indent=1, default=float))
    section(rows, args.time_budget)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
