"""Measure: build and score each planned candidate while the time budget lasts, then latency (interleaved),
peak memory (a fresh process each) or, for MCUs, the C compiler's own RAM and flash figures."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx

from edgewise.data import Dataset, Splits
from edgewise.errors import EdgewiseError
from edgewise.modelio import weight_bytes
from edgewise.optimize.candidates import Candidate, allowed
from edgewise.optimize.choose import violations_of
from edgewise.optimize.compact import compact
from edgewise.optimize.options import Log, Progress, SearchOptions, SearchResult
from edgewise.optimize.plan import NotApplicable, Parent, Plan, Planner, static_id
from edgewise.optimize.sensitivity import layer_sensitivity, quantizable_nodes
from edgewise.profile import fallback_note, make_session, measure_latency, measured_on, model_memory, running_on
from edgewise.profile.measure import LatencyStats
from edgewise.profile.openvino import ir_size
from edgewise.profile.runtime import describe
from edgewise.profile.arena import live_tensor_peak
from edgewise.profile.feeds import Feeder, model_inputs, session_inputs
from edgewise.profile.fidelity import Fidelity, Task, fidelity
from edgewise.targets import TargetProfile

# Share of the time budget for building and scoring candidates; the rest is for measuring them.
BUILD_SHARE = 0.75


def _size(model: onnx.ModelProto) -> int:
    """What the device stores: the ONNX file, plus the OpenVINO IR it carries for OpenVINO, if any."""
    return model.ByteSize() + (ir_size(model) or 0)


class Runner:
    """Runs models the way the target will: ORT's optimized kernels, or int8 reference semantics; and times
    them here, or on the device itself (`remote`: an agent started with --allow-bench)."""

    def __init__(self, target: TargetProfile, remote: str | None = None) -> None:
        from edgewise.profile.remote import RemoteBench

        self.target = target
        self.reference = not target.runs_onnxruntime
        self.remote = RemoteBench.at(remote) if remote else None
        self.ran_on: str | None = None  # where `outputs` last ran the model

    def session(self, model: onnx.ModelProto):  # type: ignore[no-untyped-def]
        return make_session(model, threads=self.target.threads, reference=self.reference,
                            providers=self.target.execution_providers)

    def outputs(self, model: onnx.ModelProto, data: Dataset) -> list[np.ndarray]:
        """Every output for every sample: here, or on the device when timing there (so fidelity is the
        device's too: its provider's numerics, fp16 underflow and all)."""
        if self.remote is not None and not self.reference:
            rs = self.remote.session(model, self.target.threads, self.target.execution_providers)
            out = rs.outputs(data)
            self.ran_on = rs.ran_on
            return out
        sess = self.session(model)
        self.ran_on = running_on(sess)
        return Feeder(session_inputs(sess), data).run(sess)

    def timed(self, models: list[onnx.ModelProto]) -> list[Any]:
        """What `time` takes for each model: a session here, or its id once uploaded to the device."""
        if self.remote is not None:
            return [self.remote.upload(m) for m in models]
        return [self.session(m) for m in models]

    def feed(self, model: onnx.ModelProto, data: Dataset) -> dict[str, np.ndarray]:
        """A batch-1 feed of the first sample, as the model takes it (read from the graph: no session)."""
        return Feeder(model_inputs(model), data).one(0)

    def time(self, handles: list[Any], feed: dict[str, np.ndarray], runs: int,
             warmup: int = 20) -> tuple[list[LatencyStats], list[str]]:
        """Batch-1 latency, measured in turns (`profile.measure.interleaved`), and how each figure was measured
        (for the report)."""
        if self.remote is not None:
            t = self.target
            stats, ran = self.remote.run(handles, feed, runs, warmup, t.threads, t.execution_providers)
            return stats, [self.remote.label(r) for r in ran]
        return measure_latency(handles, feed, runs=runs, warmup=warmup), [measured_on(h) for h in handles]

    def memory(self, model: onnx.ModelProto, handle: Any, feed: dict[str, np.ndarray]) -> tuple[int, str]:
        """Peak memory of loading and running the model in a fresh process, on the runtime it names: here, or
        on the device (`handle`: its id there); and where it was measured."""
        threads = max(1, self.target.threads)
        if self.remote is not None:
            probe = self.remote.memory(handle, feed, threads)
            return probe["rss_delta_bytes"], self.remote.label(probe["running_on"])
        probe = model_memory(model, threads, feed=feed)
        return probe["rss_delta_bytes"], f"measured ({describe(probe['running_on'])}, this machine)"

    def provider_note(self) -> str | None:
        """Said when the target's first execution provider is not what ran here (after `outputs`)."""
        t = self.target
        if not t.runs_onnxruntime or not self.ran_on:
            return None
        if self.remote is not None:
            return (f"latency and fidelity are measured on the device at {self.remote.url} "
                    f"(running on {self.ran_on})")
        note = fallback_note(t.execution_providers, self.ran_on)
        cpu_too = t.cpu_beside_accelerator and self.ran_on == "CPUExecutionProvider"
        return note and (f"{t.name}: {note}, so fidelity and latency are this machine's, not the device's"
                         + (", and its CPU is not tried beside its accelerator" if cpu_too else "")
                         + " (measure on the device to choose by its figures: --measure-on URL)")


class Clock:
    """The search's time budget: building stops at BUILD_SHARE of it, measuring gets the rest."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget, self.start = budget_s, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def building_over(self, next_s: float = 0.0) -> bool:
        return self.budget is not None and self.elapsed() + next_s > self.budget * BUILD_SHARE

    def left(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget - self.elapsed())


def fidelity_metrics(fid: Fidelity, base: Fidelity) -> dict[str, Any]:
    return {"accuracy": fid.accuracy, "top1_agreement": fid.top1_agreement, "cosine": fid.cosine,
            "score": fid.score, "fidelity_kind": fid.kind, "fidelity_details": fid.details,
            "accuracy_drop_points": (base.score - fid.score) * 100}


def build_all(plans: list[Plan], baseline: Candidate, runner: Runner, val: Dataset, base_val: list[np.ndarray],
               base_fid: Fidelity, task: Task, y_val: np.ndarray | None, opts: SearchOptions, clock: Clock,
               state: dict[str, Any], result: SearchResult, log: Log, progress: Progress) -> None:
    """Build and score each planned candidate in order, while the time budget lasts."""
    took: dict[str, float] = {}
    for i, plan in enumerate(plans):
        progress("building and scoring candidates", i, len(plans))
        if clock.building_over(plan.predicted_s(took)):
            result.not_tried.append(plan.id)
            continue
        if not plan.when():
            continue
        log(f"{plan.id}: {plan.description}")
        start, calibrating = time.monotonic(), calibration_s(plan.parent)
        c = Candidate(plan.id, plan.description, plan.parent.name, plan.precision, list(plan.recipe))
        result.candidates.append(c)
        try:
            state["recipe"] = None
            model = plan.build()
            c.recipe = list(plan.parent.recipe) + (state["recipe"] or plan.recipe)
            c.model = compact(model)
            c.recipe.append({"pass": "compact", "what": "short names, no inferred shapes, no zero int32 zero points"})
            c.logical, c.macs, c.params = plan.parent.get(), plan.parent.macs, plan.parent.params
            fid = fidelity(task, runner.outputs(c.model, val), base_val, y_val)
        except NotApplicable:
            result.candidates.remove(c)
            continue
        except EdgewiseError as e:
            c.status, c.reason, c.model = "rejected", str(e), None
            continue
        finally:  # what this kind of step costs once calibrated: the estimate for the next one
            spent = time.monotonic() - start - (calibration_s(plan.parent) - calibrating)
            took["static" if plan.method else plan.precision] = spent
            c.metrics["build_s"] = time.monotonic() - start
        c.metrics.update(fidelity_metrics(fid, base_fid))
        state["drops"][c.id] = c.metrics["accuracy_drop_points"]
        if c.precision == "int8" and opts.within_tolerance(c.metrics["accuracy_drop_points"]):
            state["int8_within_tolerance"] = True
    progress("building and scoring candidates", len(plans), len(plans))
    if result.not_tried:
        result.notes.append(f"time budget ({opts.time_budget_s:g} s) reached: {len(result.not_tried)} candidate(s) "
                            "not tried: " + ", ".join(result.not_tried))


def calibration_s(parent: Parent) -> float:
    return sum(parent.quantizer.calibrated.values()) if parent.quantizer is not None else 0.0


def measure_sensitivity(parent: Parent, planner: Planner, runner: Runner, val: Dataset, base_val: list[np.ndarray],
                 opts: SearchOptions, clock: Clock, state: dict[str, Any], result: SearchResult, log: Log,
                 progress: Progress) -> dict[str, float]:
    """Per-layer int8 sensitivity (measured once: for mixed precision and the report), as far as the time
    budget allows."""
    if state["sensitivity"] or state.get("sensitivity_tried") or opts.sensitivity_max_layers <= 0:
        return state["sensitivity"]
    if clock.building_over() or not allowed("int8", result.target) or (
            opts.only and not opts.wants(static_id("baseline", planner.first_static(), result.target))
            and not opts.wants("baseline-mixed-sensitivity")):
        return state["sensitivity"]
    state["sensitivity_tried"] = True
    try:
        q = planner.quant(parent)
    except EdgewiseError:
        return state["sensitivity"]
    cfg = planner.first_static()
    nodes = quantizable_nodes(onnx.load(str(q.fp32)), cfg.ops)
    if len(nodes) > opts.sensitivity_max_layers:
        result.notes.append(f"sensitivity measured on the first {opts.sensitivity_max_layers} of {len(nodes)} layers")
        nodes = nodes[: opts.sensitivity_max_layers]
    log(f"measuring int8 sensitivity of {len(nodes)} layers")
    try:
        state["sensitivity"] = layer_sensitivity(
            q, cfg, lambda m: runner.outputs(m, val), base_val, nodes,
            stop=clock.building_over, progress=lambda d, t: progress("per-layer int8 sensitivity", d, t))
    except EdgewiseError as e:
        result.notes.append(f"sensitivity analysis failed: {e}")
    return state["sensitivity"]


def measure_candidates(cands: list[Candidate], baseline: Candidate, target: TargetProfile, opts: SearchOptions,
             runner: Runner, splits: Splits, clock: Clock, log: Log, progress: Progress) -> None:
    val = splits.val
    ok = [c for c in [baseline] + cands if c.status == "ok" and c.model is not None]
    for c in ok:
        int8_act = c.precision == "int8" and any(s.get("mode") == "static" for s in c.recipe)
        c.metrics.update({
            "size_bytes": _size(c.model), "weight_bytes": weight_bytes(c.model),
            "arena_estimate_bytes": live_tensor_peak(c.logical or c.model, 1 if int8_act else 4),
            "macs": c.macs, "energy_uj_estimate": c.macs * target.energy_pj_per_mac * 1e-6,
        })
    if target.runs_onnxruntime:
        handles = runner.timed([c.model for c in ok])
        feed = runner.feed(ok[0].model, val)
        runs = affordable_runs(runner, handles[0], feed, len(ok), opts.latency_runs, clock)
        log(f"measuring batch-1 latency of {len(ok)} candidates, interleaved ({runs} runs each)")
        progress("measuring latency", 0, 1)
        stats, sources = runner.time(handles, feed, runs=runs, warmup=min(20, runs))
        progress("measuring latency", 1, 1)
        for c, s, source in zip(ok, stats, sources):
            c.metrics["latency_ms"] = s.as_dict()
            c.metrics["latency_p50_ms"] = s.p50_ms
            c.metrics["latency_source"] = source
        handle = dict(zip((c.id for c in ok), handles))
        if target.objective == "latency":
            runoff(handle, ok, baseline, target, opts, feed, runs, runner, clock, log)
        if opts.measure_memory:
            log("measuring peak memory in a fresh process per candidate"
                + (f", on the device at {runner.remote.url}" if runner.remote is not None else ""))
            # Fastest first: when the time budget runs out, the likely winners have their figure.
            order = [baseline] + sorted((c for c in ok if c is not baseline), key=lambda c: c.metrics["latency_p50_ms"])
            for i, c in enumerate(order):
                progress("measuring peak memory", i, len(ok))
                if c is not baseline and clock.left() == 0.0:
                    c.metrics["peak_memory_bytes"] = None
                    c.metrics["peak_memory_note"] = "not measured (time budget)"
                    continue
                try:
                    c.metrics["peak_memory_bytes"], c.metrics["peak_memory_source"] = runner.memory(
                        c.model, handle[c.id], feed)
                except EdgewiseError as e:
                    c.metrics["peak_memory_bytes"] = None
                    c.reason = f"memory probe failed: {e}"
            progress("measuring peak memory", len(ok), len(ok))
    else:
        from edgewise.codegen import figures

        for c in list(ok):
            c.metrics["latency_p50_ms"] = c.macs / float(target.macs_per_second) * 1e3  # type: ignore[arg-type]
            c.metrics["latency_source"] = f"estimated from {c.macs:,} MACs at {target.macs_per_second:,.0f} MAC/s"
            c.metrics["peak_memory_bytes"] = c.metrics["arena_estimate_bytes"]
            c.metrics["flash_bytes"] = c.metrics["weight_bytes"]
            if c.precision != "int8" or c is baseline:
                continue
            # Only what the C compiler can build is offered, with the compiler's own RAM and flash figures.
            try:
                f = figures(c.model)
            except EdgewiseError as e:
                c.status, c.reason = "rejected", f"the C compiler cannot build it: {e}"
                ok.remove(c)
                continue
            c.metrics.update({"peak_memory_bytes": f["arena_bytes"], "flash_bytes": f["constants_bytes"],
                              "arena_lower_bound_bytes": f["arena_lower_bound_bytes"],
                              "memory_source": "edgewise C compiler: static arena plan and constant arrays"})
    for c in ok:
        c.violations = violations_of(c, target, opts, is_baseline=c is baseline)
        if c.metrics["latency_p50_ms"] > target.latency_budget_ms:
            c.metrics["over_latency_preference"] = True


# Candidates this close to the fastest (relative) are measured again among themselves, and how many at most.
RUNOFF_WITHIN, RUNOFF_MAX = 0.15, 4


def runoff(handles: dict[str, Any], ok: list[Candidate], baseline: Candidate, target: TargetProfile,
           opts: SearchOptions, feed: dict[str, np.ndarray], runs: int, runner: Runner, clock: Clock,
           log: Log) -> None:
    """The close contenders, measured again in a longer interleaved run of their own (with the starting model,
    which the never-slower rule compares against). Among a dozen candidates, each run's cache and noise spread
    over all of them; two runtimes within a few percent were ordered by chance (issue 12's YOLOv8n and SSDLite:
    1% apart in the search, 7-12% apart when measured side by side)."""
    fit = [c for c in ok if c is baseline or not violations_of(c, target, opts, is_baseline=False)]
    if not fit:
        return
    fastest = min(c.metrics["latency_p50_ms"] for c in fit)
    close = sorted((c for c in fit if c.metrics["latency_p50_ms"] <= fastest * (1 + RUNOFF_WITHIN)),
                   key=lambda c: c.metrics["latency_p50_ms"])[:RUNOFF_MAX]
    group = close + ([baseline] if baseline not in close else [])
    if len([c for c in group if c is not baseline]) < 2:
        return
    more = affordable_runs(runner, handles[group[0].id], feed, len(group), 3 * max(runs, opts.latency_runs), clock)
    log(f"measuring the {len(group)} closest again, among themselves ({more} runs each)")
    stats, _ = runner.time([handles[c.id] for c in group], feed, runs=more, warmup=min(20, more))
    for c, st in zip(group, stats):
        c.metrics["latency_first_p50_ms"] = c.metrics["latency_p50_ms"]
        c.metrics["latency_ms"] = st.as_dict()
        c.metrics["latency_p50_ms"] = st.p50_ms


def affordable_runs(runner: Runner, handle: Any, feed: dict[str, np.ndarray], n_models: int, wanted: int,
                    clock: Clock) -> int:
    """Latency runs per model that fit what is left of the time budget (at least 10)."""
    left = clock.left()
    if left is None:
        return wanted
    stats, _ = runner.time([handle], feed, runs=3, warmup=1)
    per_run = stats[0].mean_ms / 1e3  # on the device itself when remote (the round trip is extra, once per run)
    return int(max(10, min(wanted, 0.6 * left / max(per_run * n_models, 1e-6))))
