"""The search: plan candidates for a target, most promising first; build and score each while the time
budget lasts; measure latency and memory side by side; keep the Pareto front; pick the best that fits.

Hard limits reject: the device's RAM and flash, the precisions it runs, and budgets the user set.
A built-in profile's latency figure is only a preference: it ranks, it never rejects every candidate.
"""

from __future__ import annotations

import fnmatch
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgewise.data import Dataset, Splits
from edgewise.errors import EdgewiseError, OptimizeError
from edgewise.modelio import save_model, weight_bytes
from edgewise.optimize.candidates import Candidate, allowed, has_weight_matmul, recipe_static, static_configs
from edgewise.optimize.compact import compact
from edgewise.optimize.fuse import fuse
from edgewise.optimize.pareto import choose, pareto_front
from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer, StaticConfig, quantize_int4_weights
from edgewise.optimize.sensitivity import auto_exclusions, layer_sensitivity, mixed_precision, quantizable_nodes
from edgewise.profile import count_macs, make_session, measure_latency, measure_memory
from edgewise.profile.arena import live_tensor_peak
from edgewise.profile.feeds import Feeder, session_inputs
from edgewise.profile.fidelity import Fidelity, Task, check_task, fidelity, infer_task
from edgewise.source import Source
from edgewise.targets import TargetProfile

Log = Callable[[str], None]
# (what, done, total): a step with a known amount of work; the CLI draws it as a bar with an ETA.
Progress = Callable[[str, int, int], None]
# Share of the time budget for building and scoring candidates; the rest is for measuring them.
BUILD_SHARE = 0.75
# Histogram calibration against MinMax calibration of the same samples, measured on this project's
# corpus (YOLOv8n, PP-OCR det/rec): Percentile 4.5-6x, Entropy 3-4x.
HISTOGRAM_COST = {"percentile": 6.0, "entropy": 4.0}


@dataclass
class SearchOptions:
    max_accuracy_drop: float = 1.0  # points of the task's fidelity metric on the validation split
    calibration_samples: int = 256
    latency_runs: int = 100
    torch_passes: bool = True  # structured pruning and distillation, when a torch model is at hand
    prune_keep: float = 0.65
    finetune_epochs: int = 10
    finetune_min_steps: int = 300
    distill_epochs: int = 40
    distill_min_steps: int = 600
    sensitivity_max_layers: int = 48
    measure_memory: bool = True
    # Glob patterns over candidate ids (e.g. "baseline-int8-percentile*", "pruned-*"): run only those
    # passes. Empty: try everything. The starting model is always measured as the reference.
    only: tuple[str, ...] = ()
    task: str | None = None  # None: inferred from the starting model's outputs
    time_budget_s: float | None = None  # None: no limit
    # Hard budgets the user set (the profile's own latency figure is a soft preference).
    max_latency_ms: float | None = None
    max_ram_bytes: int | None = None
    max_flash_bytes: int | None = None

    def wants(self, candidate_id: str) -> bool:
        return not self.only or any(fnmatch.fnmatch(candidate_id, p) for p in self.only)

    def wants_parent(self, parent: str) -> bool:
        return not self.only or any(p.startswith(parent) or p.startswith("*") for p in self.only)


@dataclass
class SearchResult:
    target: TargetProfile
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    why: str
    sensitivity: dict[str, float] = field(default_factory=dict)
    exclusions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    task: Task | None = None
    not_tried: list[str] = field(default_factory=list)
    preparation: str = ""


def _kb(n: float) -> str:
    return f"{n / 1024:,.0f} KB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


class _Runner:
    """Runs models the way the target will: ORT's optimized kernels, or int8 reference semantics."""

    def __init__(self, target: TargetProfile) -> None:
        self.target = target
        self.reference = not target.runs_onnxruntime

    def session(self, model: onnx.ModelProto):  # type: ignore[no-untyped-def]
        return make_session(model, threads=self.target.threads, reference=self.reference)

    def outputs(self, model: onnx.ModelProto, data: Dataset) -> list[np.ndarray]:
        sess = self.session(model)
        return Feeder(session_inputs(sess), data).run(sess)


class _Clock:
    """The search's time budget: building stops at BUILD_SHARE of it, measuring gets the rest."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget, self.start = budget_s, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def building_over(self, next_s: float = 0.0) -> bool:
        return self.budget is not None and self.elapsed() + next_s > self.budget * BUILD_SHARE

    def left(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget - self.elapsed())


class _NotApplicable(OptimizeError):
    """A pass with nothing to do on this model (no layer to keep in float, ...): no candidate at all."""


@dataclass
class _Parent:
    """An fp32 model candidates derive from: the starting model, or a pruned / distilled one (built lazily)."""

    name: str
    description: str
    build: Callable[[], tuple[onnx.ModelProto, int, list[dict[str, Any]]]]
    model: onnx.ModelProto | None = None
    params: int = 0
    recipe: list[dict[str, Any]] = field(default_factory=list)
    macs: int = 0
    error: str | None = None
    quantizer: Quantizer | None = None
    quant_error: str | None = None

    def get(self) -> onnx.ModelProto:
        if self.error:
            raise OptimizeError(self.error)
        if self.model is None:
            try:
                self.model, self.params, self.recipe = self.build()
            except EdgewiseError as e:
                self.error = f"{self.name} model could not be built: {e}"
                raise OptimizeError(self.error) from e
            self.macs = count_macs(self.model)
        return self.model

    def quant(self, calibration: Dataset, samples: int) -> Quantizer:
        """The parent's quantizer, prepared once; a preparation failure rejects only int8 candidates."""
        if self.quant_error:
            raise OptimizeError(self.quant_error)
        if self.quantizer is None:
            try:
                self.quantizer = Quantizer(self.get(), calibration, samples)
            except EdgewiseError as e:
                self.quant_error = f"cannot prepare the model for quantization: {e}"
                raise OptimizeError(self.quant_error) from e
            except Exception as e:  # noqa: BLE001 - ORT's tools raise anything; only int8 candidates depend on it
                self.quant_error = f"cannot prepare the model for quantization: {str(e).splitlines()[0][:200]}"
                raise OptimizeError(self.quant_error) from e
        return self.quantizer

    def close(self) -> None:
        if self.quantizer is not None:
            self.quantizer.close()


@dataclass
class _Plan:
    """A candidate not built yet: what it is, and how to build it from its parent."""

    id: str
    description: str
    parent: _Parent
    precision: str
    recipe: list[dict[str, Any]]
    build: Callable[[], onnx.ModelProto]
    when: Callable[[], bool] = lambda: True  # decided when its turn comes (e.g. only if int8 missed)
    method: str = ""  # the calibration it needs, if any

    def predicted_s(self, took: dict[str, float]) -> float:
        """What building it will likely cost, from what similar steps took so far (0 when unknown).
        Histogram calibration (Percentile, Entropy) costs several MinMax calibrations."""
        q = self.parent.quantizer
        if self.method and q is not None and self.method not in q.calibrated and "minmax" in q.calibrated:
            return q.calibrated["minmax"] * HISTOGRAM_COST.get(self.method, 1.0) + took.get("static", 0.0)
        return took.get("static" if self.method else self.precision, 0.0)


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer)


def _torch_parents(source: Source, splits: Splits, opts: SearchOptions, log: Log) -> list[_Parent]:
    """Structured-pruned and distilled fp32 models (only for zoo models, which carry their torch module)."""
    tm = source.trained

    def pruned() -> tuple[onnx.ModelProto, int, list[dict[str, Any]]]:
        from edgewise.optimize.prune import structured_prune
        from edgewise.zoo import TrainConfig, count_params
        from edgewise.zoo.export import export_onnx

        log(f"structured pruning (keep {opts.prune_keep:.0%} of channels) + fine-tuning")
        ft = TrainConfig(epochs=opts.finetune_epochs, lr=1e-3, min_steps=opts.finetune_min_steps)
        module = structured_prune(tm.module, opts.prune_keep, splits, ft)
        with tempfile.TemporaryDirectory(prefix="edgewise-torch-") as tmp:
            model = export_onnx(module, tm.sample_shape, Path(tmp) / "pruned.onnx")
        n = count_params(module)
        return model, n, [{"pass": "prune", "kind": "structured-channel", "keep_ratio": opts.prune_keep,
                           "params_before": tm.params, "params_after": n,
                           "finetune_epochs": ft.epochs_for(len(splits.train))}]

    def distilled() -> tuple[onnx.ModelProto, int, list[dict[str, Any]]]:
        from edgewise.optimize.distill import distill, pick_student_width
        from edgewise.zoo import TrainConfig, count_params
        from edgewise.zoo.export import export_onnx

        width = pick_student_width(tm.arch, tm.sample_shape, len(tm.labels), tm.params)
        log(f"distilling a {tm.arch} student (width {width}) from the model")
        cfg = TrainConfig(epochs=opts.distill_epochs, min_steps=opts.distill_min_steps)
        student = distill(tm.module, tm.arch, width, splits, cfg)
        with tempfile.TemporaryDirectory(prefix="edgewise-torch-") as tmp:
            model = export_onnx(student, tm.sample_shape, Path(tmp) / "student.onnx")
        n = count_params(student)
        return model, n, [{"pass": "distill", "student": tm.arch, "width": width, "temperature": 2.0,
                           "alpha": 0.5, "teacher_params": tm.params, "student_params": n}]

    out = []
    if opts.wants_parent("pruned"):
        out.append(_Parent("pruned", "structured pruning, fine-tuned", pruned))
    if opts.wants_parent("distilled"):
        out.append(_Parent("distilled", f"distilled {tm.arch} student", distilled))
    return out


def _static_id(parent: str, cfg: StaticConfig, target: TargetProfile) -> str:
    if cfg == ORT_DEFAULTS and not target.int8_only:
        return f"{parent}-int8-ort-defaults"
    return (f"{parent}-int8-{cfg.method}" + ("-s7" if cfg.reduce_range else "")
            + ("" if cfg.weights_per_channel else "-per-tensor"))


def _promise(cfg: StaticConfig) -> tuple[int, int, int]:
    """Static settings, most likely to win first: MinMax, then Percentile, then Entropy (its histograms
    are the slowest to calibrate); full-range weights before 7-bit; ORT's defaults after the first two."""
    method = {"minmax": 0, "percentile": 1, "entropy": 3}[cfg.method]
    if cfg == ORT_DEFAULTS:
        method = 2
    return (method, int(cfg.reduce_range), int(not cfg.weights_per_channel))


class _Planner:
    """The candidates to try for one target, in the order they are worth trying."""

    def __init__(self, source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions,
                 state: dict[str, Any], log: Log) -> None:
        self.source, self.splits, self.target, self.opts, self.state, self.log = source, splits, target, opts, state, log

    def quant(self, parent: _Parent) -> Quantizer:
        first = parent.quantizer is None and parent.quant_error is None
        if first:
            self.log(f"{parent.name}: preparing and calibrating on "
                     f"{min(len(self.splits.train), self.opts.calibration_samples)} samples")
        q = parent.quant(self.splits.train, self.opts.calibration_samples)
        if first and q.prepared != PREP_FULL:
            self.state["notes"].append(f"{parent.name}: quantization preparation ran {q.prepared}")
        return q

    def plans(self, parents: list[_Parent]) -> list[_Plan]:
        t, opts = self.target, self.opts
        out: list[_Plan] = []
        for p in parents:
            primary = p.name == "baseline"
            if not primary:
                out.append(_Plan(f"{p.name}-fp32", p.description, p, "fp32", [], p.get))
            if "fp32" in t.precisions:
                out.append(_Plan(f"{p.name}-fused", f"{p.description}; Conv+BN folded, ORT offline graph optimization",
                                 p, "fp32", [{"pass": "fuse"}], lambda p=p: self._fused(p)))
            if allowed("int8", t) or allowed("mixed", t):
                cfgs = sorted(static_configs(t, primary), key=_promise)
                for cfg in cfgs:
                    out.append(_Plan(_static_id(p.name, cfg, t), cfg.label(), p, "int8",
                                     [recipe_static(cfg, opts.calibration_samples)],
                                     lambda p=p, cfg=cfg: self.quant(p).static(cfg), method=cfg.method))
            if primary and allowed("int8", t) and t.runs_onnxruntime:
                for ops in (("MatMul", "Gemm"), ("Conv", "MatMul", "Gemm")):
                    cid = "baseline-int8-dynamic" + ("-conv" if "Conv" in ops else "")
                    out.append(_Plan(cid, f"int8 dynamic ({'+'.join(o.lower() for o in ops)})", p, "int8",
                                     [{"pass": "quantize", "mode": "dynamic", "weights": "int8", "ops": list(ops)}],
                                     lambda p=p, ops=ops: self.quant(p).dynamic(ops)))
            if primary and allowed("int4", t) and has_weight_matmul(self.source.model):
                out.append(_Plan("baseline-int4-weights", "int4 weight-only MatMul/Gemm (block 32)", p, "int4",
                                 [{"pass": "quantize", "mode": "weight-only", "weights": "int4", "block_size": 32,
                                   "symmetric": True, "ops": ["MatMul", "Gemm"]}],
                                 lambda p=p: quantize_int4_weights(p.get())))
            if primary and allowed("mixed", t):
                cfg = self.first_static()
                out.append(_Plan("baseline-mixed-auto", cfg.label() + " (auto: output-adjacent / high-range)", p,
                                 "mixed", [], lambda p=p, cfg=cfg: self._mixed_auto(p, cfg), method="percentile"))
                out.append(_Plan("baseline-mixed-sensitivity", cfg.label() + " (by sensitivity)", p, "mixed", [],
                                 lambda p=p, cfg=cfg: self._mixed_sensitivity(p, cfg),
                                 when=lambda: not self.state["int8_within_tolerance"]))
        return [pl for pl in out if opts.wants(pl.id)]

    def first_static(self) -> StaticConfig:
        """The static setting tried first for this target: the base of mixed precision and sensitivity."""
        return sorted(static_configs(self.target, True), key=_promise)[0]

    def _fused(self, p: _Parent) -> onnx.ModelProto:
        model, info = fuse(p.get())
        self.state["recipe"] = [{"pass": "fuse", **info}]
        return model

    def _mixed_auto(self, p: _Parent, cfg: StaticConfig) -> onnx.ModelProto:
        q = self.quant(p)
        prepared = onnx.load(str(q.fp32))
        self.state["exclusions"] = auto_exclusions(prepared, q.ranges("minmax"), q.ranges("percentile"))
        if not self.state["exclusions"]:
            raise _NotApplicable("no output-adjacent or high-range layer to keep in float")
        ex = replace(cfg, exclude=tuple(sorted(self.state["exclusions"])))
        self.state["recipe"] = [recipe_static(ex, self.opts.calibration_samples)]
        return q.static(ex)

    def _mixed_sensitivity(self, p: _Parent, cfg: StaticConfig) -> onnx.ModelProto:
        q = self.quant(p)
        sens = self.state["measure_sensitivity"]()
        if not sens:
            raise _NotApplicable("per-layer sensitivity was not measured")
        self.log("int8 misses the tolerance: keeping the most sensitive layers in float")
        found = mixed_precision(q, cfg, sens, self.state["acceptable"])
        if found is None:
            raise OptimizeError("no set of float layers brings int8 within the tolerance")
        model, keep = found
        mcfg = replace(cfg, exclude=keep)
        self.state["recipe"] = [recipe_static(mcfg, self.opts.calibration_samples)]
        return model


PREP_FULL = "shape inference and graph optimization"


def search(source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions | None = None,
           log: Log = lambda _m: None, progress: Progress = lambda _w, _d, _t: None) -> SearchResult:
    opts = opts or SearchOptions()
    clock = _Clock(opts.time_budget_s)
    runner = _Runner(target)
    val = splits.val
    log(f"running the starting model on {len(val)} validation samples")
    base_val = runner.outputs(source.model, val)
    task = check_task(opts.task, base_val) if opts.task else infer_task(
        base_val, val.sample_shape if not val.named else None, val.y is not None)
    y_val = val.y if task.name == "classification" else None
    base_fid = fidelity(task, base_val, base_val, y_val)
    baseline = Candidate("baseline-fp32", "starting model, as given", "baseline", "fp32", [], source.model,
                         count_macs(source.model), _params(source.model))
    baseline.logical = source.model
    baseline.metrics.update(_fidelity_metrics(base_fid, base_fid))
    result = SearchResult(target, baseline, [], None, "", task=task)
    if val.y is not None and task.name != "classification":
        result.notes.append(f"labels are used for classification only; the {task.name} fidelity is agreement "
                            "with the starting model")
    if not target.runs_onnxruntime:
        result.notes.append("latency is estimated from MACs; it was not measured on the device")

    def acceptable(model: onnx.ModelProto) -> bool:
        fid = fidelity(task, runner.outputs(model, val), base_val, y_val)
        return (base_fid.score - fid.score) * 100 <= opts.max_accuracy_drop

    state: dict[str, Any] = {"notes": result.notes, "exclusions": {}, "sensitivity": {}, "recipe": None,
                             "int8_within_tolerance": False, "acceptable": acceptable}
    planner = _Planner(source, splits, target, opts, state, log)
    base_parent = _Parent("baseline", "starting model", lambda: (source.model, baseline.params, []))
    parents = [base_parent]
    if source.trained is not None and opts.torch_passes:
        parents += _torch_parents(source, splits, opts, log)
    plans = planner.plans(parents)
    state["measure_sensitivity"] = lambda: _sensitivity(base_parent, planner, runner, val, base_val, opts, clock,
                                                        state, result, log, progress)
    try:
        _build_all(plans, baseline, runner, val, base_val, base_fid, task, y_val, opts, clock, state, result,
                   log, progress)
        state["measure_sensitivity"]()  # for the report, as far as the time budget allows
    finally:
        for p in parents:
            p.close()
    result.sensitivity, result.exclusions = state["sensitivity"], state["exclusions"]
    _measure(result.candidates, baseline, target, opts, runner, splits, clock, log, progress)
    _choose(result, opts)
    return result


def _fidelity_metrics(fid: Fidelity, base: Fidelity) -> dict[str, Any]:
    return {"accuracy": fid.accuracy, "top1_agreement": fid.top1_agreement, "cosine": fid.cosine,
            "score": fid.score, "fidelity_kind": fid.kind, "fidelity_details": fid.details,
            "accuracy_drop_points": (base.score - fid.score) * 100}


def _build_all(plans: list[_Plan], baseline: Candidate, runner: _Runner, val: Dataset, base_val: list[np.ndarray],
               base_fid: Fidelity, task: Task, y_val: np.ndarray | None, opts: SearchOptions, clock: _Clock,
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
        start, calibrating = time.monotonic(), _calibration_s(plan.parent)
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
        except _NotApplicable:
            result.candidates.remove(c)
            continue
        except EdgewiseError as e:
            c.status, c.reason, c.model = "rejected", str(e), None
            continue
        finally:  # what this kind of step costs once calibrated: the estimate for the next one
            spent = time.monotonic() - start - (_calibration_s(plan.parent) - calibrating)
            took["static" if plan.method else plan.precision] = spent
        c.metrics.update(_fidelity_metrics(fid, base_fid))
        if c.precision == "int8" and c.metrics["accuracy_drop_points"] <= opts.max_accuracy_drop:
            state["int8_within_tolerance"] = True
    progress("building and scoring candidates", len(plans), len(plans))
    if result.not_tried:
        result.notes.append(f"time budget ({opts.time_budget_s:g} s) reached: {len(result.not_tried)} candidate(s) "
                            "not tried: " + ", ".join(result.not_tried))


def _calibration_s(parent: _Parent) -> float:
    return sum(parent.quantizer.calibrated.values()) if parent.quantizer is not None else 0.0


def _sensitivity(parent: _Parent, planner: _Planner, runner: _Runner, val: Dataset, base_val: list[np.ndarray],
                 opts: SearchOptions, clock: _Clock, state: dict[str, Any], result: SearchResult, log: Log,
                 progress: Progress) -> dict[str, float]:
    """Per-layer int8 sensitivity (measured once: for mixed precision and the report), as far as the time
    budget allows."""
    if state["sensitivity"] or state.get("sensitivity_tried") or opts.sensitivity_max_layers <= 0:
        return state["sensitivity"]
    if clock.building_over() or not allowed("int8", result.target) or (
            opts.only and not opts.wants(_static_id("baseline", planner.first_static(), result.target))
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


def _measure(cands: list[Candidate], baseline: Candidate, target: TargetProfile, opts: SearchOptions,
             runner: _Runner, splits: Splits, clock: _Clock, log: Log, progress: Progress) -> None:
    val = splits.val
    ok = [c for c in [baseline] + cands if c.status == "ok" and c.model is not None]
    for c in ok:
        int8_act = c.precision == "int8" and any(s.get("mode") == "static" for s in c.recipe)
        c.metrics.update({
            "size_bytes": c.model.ByteSize(), "weight_bytes": weight_bytes(c.model),
            "arena_estimate_bytes": live_tensor_peak(c.logical or c.model, 1 if int8_act else 4),
            "macs": c.macs, "energy_uj_estimate": c.macs * target.energy_pj_per_mac * 1e-6,
        })
    if target.runs_onnxruntime:
        sessions = [runner.session(c.model) for c in ok]
        feed = Feeder(session_inputs(sessions[0]), val).one(0)
        runs = _affordable_runs(sessions[0], feed, len(ok), opts.latency_runs, clock)
        log(f"measuring batch-1 latency of {len(ok)} candidates, interleaved ({runs} runs each)")
        progress("measuring latency", 0, 1)
        stats = measure_latency(sessions, feed, runs=runs, warmup=min(20, runs))
        progress("measuring latency", 1, 1)
        for c, s in zip(ok, stats):
            c.metrics["latency_ms"] = s.as_dict()
            c.metrics["latency_p50_ms"] = s.p50_ms
            c.metrics["latency_source"] = "measured (ONNX Runtime, this machine)"
        if opts.measure_memory:
            log("measuring peak memory in a fresh process per candidate")
            # Fastest first: when the time budget runs out, the likely winners have their figure.
            order = [baseline] + sorted((c for c in ok if c is not baseline), key=lambda c: c.metrics["latency_p50_ms"])
            with tempfile.TemporaryDirectory(prefix="edgewise-mem-") as tmp:
                for i, c in enumerate(order):
                    progress("measuring peak memory", i, len(ok))
                    if c is not baseline and clock.left() == 0.0:
                        c.metrics["peak_memory_bytes"] = None
                        c.metrics["peak_memory_note"] = "not measured (time budget)"
                        continue
                    path = Path(tmp) / f"{c.id}.onnx"
                    save_model(c.model, path)
                    try:
                        c.metrics["peak_memory_bytes"] = measure_memory(path, max(1, target.threads), feed=feed)[
                            "rss_delta_bytes"]
                    except EdgewiseError as e:
                        c.metrics["peak_memory_bytes"] = None
                        c.reason = f"memory probe failed: {e}"
                progress("measuring peak memory", len(ok), len(ok))
    else:
        from edgewise.codegen.lower import lower
        from edgewise.codegen.planner import plan

        for c in list(ok):
            c.metrics["latency_p50_ms"] = c.macs / float(target.macs_per_second) * 1e3  # type: ignore[arg-type]
            c.metrics["latency_source"] = f"estimated from {c.macs:,} MACs at {target.macs_per_second:,.0f} MAC/s"
            c.metrics["peak_memory_bytes"] = c.metrics["arena_estimate_bytes"]
            c.metrics["flash_bytes"] = c.metrics["weight_bytes"]
            if c.precision != "int8" or c is baseline:
                continue
            # Only what the C compiler can build is offered, with the compiler's own RAM and flash figures.
            try:
                graph = lower(c.model)
                arena = plan(graph)
            except EdgewiseError as e:
                c.status, c.reason = "rejected", f"the C compiler cannot build it: {e}"
                ok.remove(c)
                continue
            c.metrics.update({"peak_memory_bytes": arena.arena_bytes, "flash_bytes": graph.flash_bytes(),
                              "arena_lower_bound_bytes": arena.lower_bound_bytes,
                              "memory_source": "edgewise C compiler: static arena plan and constant arrays"})
    for c in ok:
        c.violations = _violations(c, target, opts, is_baseline=c is baseline)
        if c.metrics["latency_p50_ms"] > target.latency_budget_ms:
            c.metrics["over_latency_preference"] = True


def _affordable_runs(sess: Any, feed: dict[str, np.ndarray], n_models: int, wanted: int, clock: _Clock) -> int:
    """Latency runs per model that fit what is left of the time budget (at least 10)."""
    left = clock.left()
    if left is None:
        return wanted
    t = time.perf_counter()
    for _ in range(3):
        sess.run(None, feed)
    per_run = (time.perf_counter() - t) / 3
    return int(max(10, min(wanted, 0.6 * left / max(per_run * n_models, 1e-6))))


def _violations(c: Candidate, target: TargetProfile, opts: SearchOptions, is_baseline: bool) -> list[str]:
    """What a candidate lacks against the hard limits: the device's, and the budgets the user set."""
    m = c.metrics
    v: list[str] = []
    if not allowed(c.precision, target):
        v.append(f"{c.precision} not allowed (runs {', '.join(target.precisions)})")
    if not is_baseline and m["accuracy_drop_points"] > opts.max_accuracy_drop + 1e-9:
        v.append(f"{m['fidelity_kind'].replace('_', ' ')} drop {m['accuracy_drop_points']:.2f} points > "
                 f"{opts.max_accuracy_drop:g}")
    flash = m.get("flash_bytes", m["size_bytes"])
    if flash > target.flash_bytes:
        v.append(f"needs {_kb(flash)} flash, target has {_kb(target.flash_bytes)}")
    if opts.max_flash_bytes is not None and flash > opts.max_flash_bytes:
        v.append(f"needs {_kb(flash)} flash > --max-flash-kb {opts.max_flash_bytes / 1024:g}")
    ram = m.get("peak_memory_bytes")
    if ram is not None and ram > target.ram_bytes:
        v.append(f"needs {_kb(ram)} RAM, target has {_kb(target.ram_bytes)}")
    if ram is not None and opts.max_ram_bytes is not None and ram > opts.max_ram_bytes:
        v.append(f"needs {_kb(ram)} RAM > --max-ram-kb {opts.max_ram_bytes / 1024:g}")
    if opts.max_latency_ms is not None and m["latency_p50_ms"] > opts.max_latency_ms:
        v.append(f"latency {m['latency_p50_ms']:.2f} ms > --max-latency-ms {opts.max_latency_ms:g}")
    return v


def _point(c: Candidate) -> tuple[float, float, float, float]:
    m = c.metrics
    return (m["score"], float(m.get("flash_bytes", m["size_bytes"])), m["latency_p50_ms"],
            float(m.get("peak_memory_bytes") or 0))


def _choose(result: SearchResult, opts: SearchOptions) -> None:
    target, baseline = result.target, result.baseline
    measured = [c for c in [baseline] + result.candidates if c.status == "ok" and "latency_p50_ms" in c.metrics]
    for i in pareto_front([_point(c) for c in measured]):
        measured[i].pareto = True
    feasible = [c for c in measured if c.feasible]
    if target.objective == "latency" and allowed("fp32", target) and baseline.status == "ok":
        # Never ship a model slower than the one we started from.
        base_ms = baseline.metrics["latency_p50_ms"]
        for c in feasible:
            if c.metrics["latency_p50_ms"] > base_ms:
                c.metrics["slower_than_start"] = True
        feasible = [c for c in feasible if c.metrics["latency_p50_ms"] <= base_ms]
    preferred = [c for c in feasible if not c.metrics.get("over_latency_preference")]
    if feasible and not preferred:
        fastest = min(c.metrics["latency_p50_ms"] for c in feasible)
        result.notes.append(f"no candidate meets {target.name}'s latency preference of {target.latency_budget_ms:g} ms "
                            f"(fastest: {fastest:.2f} ms); chose among all that fit (set --max-latency-ms to make "
                            "latency a hard limit)")
    pool = preferred or feasible
    if pool:
        result.chosen = pool[choose([_point(c) for c in pool], target.objective)]
        result.why = _why(result.chosen, baseline, target)
    else:
        result.why = _nothing_fits(measured, target)


def _why(c: Candidate, baseline: Candidate, target: TargetProfile) -> str:
    m, b = c.metrics, baseline.metrics
    size = b["size_bytes"] / max(m["size_bytes"], 1)
    if target.runs_onnxruntime:
        speed = f"{b['latency_p50_ms'] / max(m['latency_p50_ms'], 1e-9):.2f}x the starting model's measured speed"
    else:
        speed = f"estimated {m['latency_p50_ms']:.1f} ms from MACs"
    kind = m["fidelity_kind"].replace("_", " ")
    return (f"{c.id}: best {target.objective} among candidates that fit {target.name} "
            f"({speed}, {size:.2f}x smaller, {m['accuracy_drop_points']:+.2f} points {kind} drop on validation)")


def closest(measured: list[Candidate], n: int = 3) -> list[Candidate]:
    """The candidates nearest to fitting: fewest violations, then smallest fidelity drop."""
    scored = [c for c in measured if c.status == "ok" and c.violations]
    return sorted(scored, key=lambda c: (len(c.violations), c.metrics.get("accuracy_drop_points", 1e9)))[:n]


def _nothing_fits(measured: list[Candidate], target: TargetProfile) -> str:
    near = closest(measured, 1)
    if not near:
        return f"no candidate could be built and run for {target.name}"
    return f"nothing fits {target.name}; closest is {near[0].id}: " + "; ".join(near[0].violations)


def final_runs(result: SearchResult, budget_s: float | None, wanted: int = 300) -> int:
    """Latency runs for the final comparison: about a tenth of the time budget (two models; a
    confirmation run may double it), at least 30."""
    ms = result.baseline.metrics.get("latency_p50_ms")
    if budget_s is None or not ms or not result.target.runs_onnxruntime:
        return wanted
    return int(max(30, min(wanted, 0.1 * budget_s * 1000 / (2 * ms))))


def finalize(result: SearchResult, splits: Splits, runs: int = 300) -> dict[str, Any]:
    """Chosen vs starting model on the held-out test split, and their latency measured side by side."""
    c, b = result.chosen, result.baseline
    if c is None or c.model is None or b.model is None:
        raise OptimizeError(result.why)
    runner = _Runner(result.target)
    test = splits.test
    task = result.task or infer_task(runner.outputs(b.model, test.head(1)), None, test.y is not None)
    y = test.y if task.name == "classification" else None
    base_out = runner.outputs(b.model, test)
    fid_b = fidelity(task, base_out, base_out, y)
    fid_c = fidelity(task, runner.outputs(c.model, test), base_out, y)
    final = {"accuracy": fid_c.score, "baseline_accuracy": fid_b.score,
             "accuracy_kind": fid_c.kind if fid_c.kind == "accuracy" else f"{fid_c.kind}_with_fp32",
             "task": task.name, "task_source": task.why, "fidelity_kind": fid_c.kind, "fidelity": fid_c.score,
             "fidelity_details": fid_c.details,
             "top1_agreement": fid_c.top1_agreement, "cosine": fid_c.cosine,
             "size_bytes": c.metrics["size_bytes"], "baseline_size_bytes": b.metrics["size_bytes"],
             "peak_memory_bytes": c.metrics.get("peak_memory_bytes"),
             "baseline_peak_memory_bytes": b.metrics.get("peak_memory_bytes"),
             "arena_estimate_bytes": c.metrics["arena_estimate_bytes"], "macs": c.macs,
             "energy_uj_estimate": c.metrics["energy_uj_estimate"], "split": "test", "test_samples": len(test)}
    if task.name == "classification" and fid_c.kind == "top1_agreement":
        final["accuracy_kind"] = "top1_agreement_with_fp32"
    if result.target.runs_onnxruntime:
        sessions = [runner.session(b.model), runner.session(c.model)]
        feed = Feeder(session_inputs(sessions[0]), test).one(0)
        sb, sc = measure_latency(sessions, feed, runs=runs)
        if (result.target.objective == "latency" and b.feasible and c is not b
                and sc.p50_ms > sb.p50_ms):
            # A second, longer look before concluding: single measurements on a shared machine are noisy.
            sb, sc = measure_latency(sessions, feed, runs=2 * runs)
            if sc.p50_ms > sb.p50_ms:
                result.notes.append(f"{c.id} measured {sb.p50_ms / sc.p50_ms:.3f}x the starting model's speed in "
                                    "the confirmation run; shipping the starting model instead (never slower)")
                result.chosen = b
                result.why = (f"{b.id}: no candidate beat the starting model's latency on {result.target.name} "
                              "when measured again")
                return finalize(result, splits, runs)
        final.update({"latency_ms": sc.as_dict(), "baseline_latency_ms": sb.as_dict(),
                      "latency_p50_ms": sc.p50_ms, "baseline_latency_p50_ms": sb.p50_ms,
                      "speedup": sb.p50_ms / sc.p50_ms, "latency_threads": result.target.threads or "all",
                      "latency_source": "measured (ONNX Runtime, this machine)"})
    else:
        final.update({"latency_p50_ms": c.metrics["latency_p50_ms"],
                      "baseline_latency_p50_ms": b.metrics["latency_p50_ms"],
                      "latency_source": c.metrics["latency_source"],
                      "flash_bytes": c.metrics["flash_bytes"], "ram_bytes": c.metrics["peak_memory_bytes"]})
    result.final = final
    return final
