"""Graph pruning on detectors: the pruned, fine-tuned parent with and without box focus (each anchor's box
weighted by the starting model's confidence there), in the search's own run, judged as the search judges it
(mAP@0.5:0.95 on the validation split against the data's boxes).

Run: .venv/bin/python benchmarks/bench_graph_prune.py [--time-budget S] [model ...]
     (writes the 'graph-prune-detectors' section of RESULTS.md)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, machine, model_rows, table, write_section  # noqa: E402
from bench_corpus import model_and_data  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize import graph_finetune  # noqa: E402
from edgewise.optimize.search import SearchOptions, search  # noqa: E402
from edgewise.source import fit_data, load_source  # noqa: E402
from edgewise.targets import load_target  # noqa: E402

MODELS = ["zoo-tinydet", "yolov8n-shapes"]
FOCUS = graph_finetune.box_focus


def run(name: str, budget: float, focus: bool) -> dict:
    _, model_path, data, task_flag, _ = model_and_data(name)
    src, splits = fit_data(load_source(model_path), load_splits(data))
    graph_finetune.box_focus = FOCUS if focus else (lambda _t: None)
    opts = SearchOptions(time_budget_s=budget, task=task_flag, measure_memory=False,
                         only=("baseline-fp32", "pruned-fp32"))
    t0 = time.perf_counter()
    try:
        r = search(src, splits, load_target("edge-node"), opts,
                   log=lambda m: print(f"    {time.perf_counter() - t0:5.0f}s {m}", flush=True))
    finally:
        graph_finetune.box_focus = FOCUS
    base = r.baseline.metrics
    c = next(c for c in r.candidates if c.id == "pruned-fp32")
    step = next((s for s in c.recipe if s.get("pass") == "prune"), {})
    row = {"model": name, "focus": focus, "budget": budget, "status": c.status, "reason": c.reason,
           "baseline": base.get("score"), "drop": c.metrics.get("accuracy_drop_points"),
           "speed": (base["latency_p50_ms"] / c.metrics["latency_p50_ms"]) if c.metrics.get("latency_p50_ms")
           else None,
           "finetune": step.get("finetune", {}), "val_samples": len(splits.val)}
    print(json.dumps(row, default=float), flush=True)
    return row


def section(rows: list[dict], budget: float) -> None:
    budgets = sorted({r.get("budget", budget) for r in rows})
    mixed = len(budgets) > 1
    body = []
    for r in rows:
        ft = r["finetune"]
        body.append([r["model"] + (f" ({r['budget']:g} s)" if mixed else ""),
                     "box focus" if r["focus"] else "plain (until stop 28)",
                     f"{r['baseline'] * 100:.1f}%" if r["baseline"] is not None else "-",
                     f"{r['drop']:+.2f}" if r["drop"] is not None else f"{r['status']}: {r['reason'][:50]}",
                     f"{r['speed']:.2f}x" if r["speed"] else "-",
                     f"{ft.get('epochs', '-')} / {ft.get('seconds', '-')} s"])
    md = ("## Graph pruning on detectors: box focus in the fine-tuning loss\n\n"
          f"Machine: {machine()}; CPU flags: {cpu_flags()}. `optimize --target edge-node --time-budget "
          f"{' or '.join(f'{b:g}' for b in budgets)}`{' (per row, in brackets)' if mixed else ''} limited to "
          "the starting model and the graph-pruned parent (65% of channels kept, "
          "fine-tuned to the starting model's outputs on the training split). Drop: mAP@0.5:0.95 points on "
          "the validation split against the data's boxes (the search's own judgement; the tolerance is 1 "
          "point). Plain: every output element whitened alike. Box focus: each anchor's four box coordinates "
          "weighted by the starting model's top class score there. Speed: ORT fp32 of the starting model / "
          "the pruned fp32, batch 1, one thread, in the search's interleaved run.\n\n"
          + table(["model", "loss", "starting mAP50-95", "drop (points)", "speed", "epochs / fine-tune"],
                  body))
    write_section("graph-prune-detectors", md)


def both(name: str, budget: float) -> list[dict]:
    rows = []
    for focus in (False, True):
        print(f"== {name} ({'box focus' if focus else 'plain'})", flush=True)
        rows.append(run(name, budget, focus))
    return rows


def main() -> None:
    model_rows("graph-prune.json", MODELS, 600, both, section)


if __name__ == "__main__":
    main()
