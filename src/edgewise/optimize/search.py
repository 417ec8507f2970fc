"""The search: plan candidates for a target, most promising first; build and score each while the time
budget lasts; measure latency and memory side by side; keep the Pareto front; pick the best that fits.

Hard limits reject: the device's RAM and flash, the precisions it runs, and budgets the user set.
A built-in profile's latency figure is only a preference: it ranks, it never rejects every candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from edgewise.data import Splits
from edgewise.errors import OptimizeError
from edgewise.optimize.candidates import Candidate
from edgewise.optimize.choose import closest, decide
from edgewise.optimize.measure import (
    BUILD_SHARE,
    Clock,
    Runner,
    build_all,
    fidelity_metrics,
    measure_candidates,
    measure_sensitivity,
)
from edgewise.optimize.options import Log, Progress, SearchOptions, SearchResult
from edgewise.optimize.plan import Parent, Planner, graph_parents, param_count, torch_parents
from edgewise.profile import count_macs
from edgewise.profile.fidelity import TRUTH_KINDS, check_task, fidelity, ground_truth, infer_task, with_alphabet
from edgewise.source import Source
from edgewise.targets import TargetProfile

FINETUNE_RESERVE = 0.2  # of the building time, kept from fine-tuning a pruned graph for its candidates

__all__ = ["Log", "Progress", "SearchOptions", "SearchResult", "closest", "final_runs", "finalize", "search"]


def search(source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions | None = None,
           log: Log = lambda _m: None, progress: Progress = lambda _w, _d, _t: None) -> SearchResult:
    opts = opts or SearchOptions()
    clock = Clock(opts.time_budget_s)
    runner = Runner(target, opts.measure_on)
    val = splits.val
    log(f"running the starting model on {len(val)} validation samples")
    base_val = runner.outputs(source.model, val)
    ran_on = runner.ran_on  # the target's accelerator, or the CPU it fell back to (here, or on the device)
    task = check_task(opts.task, base_val) if opts.task else infer_task(
        base_val, val.sample_shape if not val.named else None, val.y is not None)
    task = with_alphabet(task, source.model, base_val, source.labels)
    y_val = ground_truth(task, val)
    base_fid = fidelity(task, base_val, base_val, y_val)
    baseline = Candidate("baseline-fp32", "starting model, as given", "baseline", "fp32", [], source.model,
                         count_macs(source.model), param_count(source.model))
    baseline.logical = source.model
    baseline.metrics.update(fidelity_metrics(base_fid, base_fid))
    result = SearchResult(target, baseline, [], None, "", task=task, measure_on=opts.measure_on)
    if task.name == "ctc" and task.alphabet is None and val.texts is not None:
        classes = int(base_val[0].shape[-1])
        # one label per class is fit_data's numbering (a dictionary leaves class 0 to the blank)
        given = f"the {len(source.labels)} labels given do not fit its {classes} classes (blank first, then one " \
                "character per line, space last)" if len(source.labels) not in (0, classes) else "it carries no alphabet"
        result.notes.append(f"the recognizer is scored by agreement with itself, not against the data's texts: {given}"
                            "; pass its character dictionary with --labels")
    if y_val is None and task.name == "anomaly":
        result.notes.append("the validation split has no anomalies (as in practice): candidates are compared by how "
                            "closely their anomaly scores follow the starting model's")
    elif y_val is None and (val.y is not None or val.boxes is not None):
        result.notes.append(f"the data's labels do not fit a {task.name} model; its fidelity is agreement with the "
                            "starting model")
    if not target.runs_onnxruntime:
        result.notes.append("latency is estimated from MACs; it was not measured on the device")
    elif note := runner.provider_note():
        result.notes.append(note)

    def acceptable(model: onnx.ModelProto) -> bool:
        return opts.within_tolerance((base_fid.score - score(runner.outputs(model, val))) * 100)

    def score(outs: list[np.ndarray], samples: list[int] | None = None) -> float:
        """The task's score of outputs for the validation samples (all, or those listed), as candidates are
        scored: for tools that search with their own runtime (NNCF's accuracy control)."""
        if samples is None:
            return fidelity(task, outs, base_val, y_val).score
        return fidelity(task, outs, [r[samples] for r in base_val], _subset(y_val, samples)).score

    state: dict[str, Any] = {"notes": result.notes, "exclusions": {}, "sensitivity": {}, "recipe": None,
                             "int8_within_tolerance": False, "acceptable": acceptable, "score": score,
                             "drops": {}, "building_over": clock.building_over, "baseline_ran_on": ran_on}
    planner = Planner(source, splits, target, opts, state, log)
    base_parent = Parent("baseline", "starting model", lambda: (source.model, baseline.params, []))
    parents = [base_parent]
    if source.trained is not None and opts.torch_passes and task.name == "classification":
        parents += torch_parents(source, splits, opts, log)
    elif opts.torch_passes:  # no torch module, or a task the zoo's fine-tune and distillation loss do not fit
        # fine-tuning stops early enough to leave the pruned model's own candidates (int8, NNCF) time to build
        reserve = FINETUNE_RESERVE * opts.time_budget_s * BUILD_SHARE if opts.time_budget_s else 0.0
        parents += graph_parents(source, splits, opts, log, lambda: clock.building_over(reserve), progress)
    plans = planner.plans(parents)
    state["measure_sensitivity"] = lambda: measure_sensitivity(base_parent, planner, runner, val, base_val, opts, clock,
                                                        state, result, log, progress)
    try:
        build_all(plans, baseline, runner, val, base_val, base_fid, task, y_val, opts, clock, state, result,
                   log, progress)
        state["measure_sensitivity"]()  # for the report, as far as the time budget allows
    finally:
        for p in parents:
            p.close()
    result.sensitivity, result.exclusions = state["sensitivity"], state["exclusions"]
    measure_candidates(result.candidates, baseline, target, opts, runner, splits, clock, log, progress)
    decide(result, opts)
    return result


def _subset(y: Any, samples: list[int]) -> Any:
    """Ground truth for some samples: labels (an array) or per-image boxes (a list)."""
    if y is None:
        return None
    return y[samples] if isinstance(y, np.ndarray) else [y[i] for i in samples]


def final_runs(result: SearchResult, budget_s: float | None, wanted: int = 300) -> int:
    """Latency runs for the final comparison: about a tenth of the time budget (two models; a
    confirmation run may double it), at least 30."""
    ms = result.baseline.metrics.get("latency_p50_ms")
    if budget_s is None or not ms or not result.target.runs_onnxruntime:
        return wanted
    return int(max(30, min(wanted, 0.1 * budget_s * 1000 / (2 * ms))))


def finalize(result: SearchResult, splits: Splits, runs: int = 300, tolerance: float | None = None) -> dict[str, Any]:
    """Chosen vs starting model on the held-out test split, and their latency measured side by side. A chosen
    model further down on test than `tolerance` (points) gets a note: it was chosen on validation, and the
    best of many candidates scored on one split looks better there than it is."""
    c, b = result.chosen, result.baseline
    if c is None or c.model is None or b.model is None:
        raise OptimizeError(result.why)
    runner = Runner(result.target, result.measure_on)
    test = splits.test
    task = result.task or infer_task(runner.outputs(b.model, test.head(1)), None, test.y is not None)
    y = ground_truth(task, test)
    base_out = runner.outputs(b.model, test)
    fid_b = fidelity(task, base_out, base_out, y)
    fid_c = fidelity(task, runner.outputs(c.model, test), base_out, y)
    final = {"accuracy": fid_c.score, "baseline_accuracy": fid_b.score,
             "accuracy_kind": fid_c.kind if fid_c.kind in TRUTH_KINDS else f"{fid_c.kind}_with_fp32",
             "task": task.name, "task_source": task.why, "fidelity_kind": fid_c.kind, "fidelity": fid_c.score,
             "fidelity_details": fid_c.details, "baseline_fidelity_details": fid_b.details,
             "top1_agreement": fid_c.top1_agreement, "cosine": fid_c.cosine,
             "size_bytes": c.metrics["size_bytes"], "baseline_size_bytes": b.metrics["size_bytes"],
             "peak_memory_bytes": c.metrics.get("peak_memory_bytes"),
             "baseline_peak_memory_bytes": b.metrics.get("peak_memory_bytes"),
             "arena_estimate_bytes": c.metrics["arena_estimate_bytes"], "macs": c.macs,
             "energy_uj_estimate": c.metrics["energy_uj_estimate"], "split": "test", "test_samples": len(test)}
    if task.name == "classification" and fid_c.kind == "top1_agreement":
        final["accuracy_kind"] = "top1_agreement_with_fp32"
    drop = (fid_b.score - fid_c.score) * 100
    if tolerance is not None and c is not b and drop > tolerance + 1e-9:
        result.notes.append(f"{c.id} is {drop:.2f} points down on the test split ({len(test)} samples), over the "
                            f"{tolerance:g}-point tolerance it met on validation "
                            f"({c.metrics.get('accuracy_drop_points', 0.0):.2f} down): more data, or a stricter "
                            "--max-accuracy-drop, narrows that gap")
    if result.target.runs_onnxruntime:
        handles = runner.timed([b.model, c.model])
        feed = runner.feed(b.model, test)
        (sb, sc), sources = runner.time(handles, feed, runs=runs)
        if (result.target.objective == "latency" and b.feasible and c is not b
                and sc.p50_ms > sb.p50_ms):
            # A second, longer look before concluding: single measurements on a shared machine are noisy.
            (sb, sc), sources = runner.time(handles, feed, runs=2 * runs)
            if sc.p50_ms > sb.p50_ms:
                result.notes.append(f"{c.id} measured {sb.p50_ms / sc.p50_ms:.3f}x the starting model's speed in "
                                    "the confirmation run; shipping the starting model instead (never slower)")
                result.chosen = b
                result.why = (f"{b.id}: no candidate beat the starting model's latency on {result.target.name} "
                              "when measured again")
                return finalize(result, splits, runs, tolerance)
        final.update({"latency_ms": sc.as_dict(), "baseline_latency_ms": sb.as_dict(),
                      "latency_p50_ms": sc.p50_ms, "baseline_latency_p50_ms": sb.p50_ms,
                      "speedup": sb.p50_ms / sc.p50_ms, "latency_threads": result.target.threads or "all",
                      "latency_source": sources[1]})
    else:
        final.update({"latency_p50_ms": c.metrics["latency_p50_ms"],
                      "baseline_latency_p50_ms": b.metrics["latency_p50_ms"],
                      "latency_source": c.metrics["latency_source"],
                      "flash_bytes": c.metrics["flash_bytes"], "ram_bytes": c.metrics["peak_memory_bytes"]})
    result.final = final
    return final
