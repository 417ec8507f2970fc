"""The search: build candidates for a target, run every one on ONNX Runtime, measure, keep the Pareto
front, and pick the best that fits the target's budget within the accuracy tolerance."""

from __future__ import annotations

import fnmatch
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgewise.codegen.lower import lower
from edgewise.codegen.planner import plan
from edgewise.data import Splits
from edgewise.errors import EdgewiseError, OptimizeError
from edgewise.modelio import weight_bytes
from edgewise.optimize.candidates import (
    Candidate,
    allowed,
    has_weight_matmul,
    recipe_static,
    static_configs,
)
from edgewise.optimize.compact import compact
from edgewise.optimize.fuse import fuse
from edgewise.optimize.pareto import choose, pareto_front
from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer, StaticConfig, quantize_int4_weights
from edgewise.optimize.sensitivity import (
    auto_exclusions,
    layer_sensitivity,
    mixed_precision,
    quantizable_nodes,
)
from edgewise.profile import count_macs, evaluate, make_session, measure_latency, measure_memory, run_model
from edgewise.profile.arena import live_tensor_peak
from edgewise.source import Source
from edgewise.targets import TargetProfile

Log = Callable[[str], None]


@dataclass
class SearchOptions:
    max_accuracy_drop: float = 1.0  # percentage points on the validation split
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


def _kb(n: float) -> str:
    return f"{n / 1024:,.0f} KB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


class _Runner:
    """Runs models the way the target will: ORT's optimized kernels, or int8 reference semantics."""

    def __init__(self, target: TargetProfile) -> None:
        self.target = target
        self.reference = not target.runs_onnxruntime

    def session(self, model: onnx.ModelProto):  # type: ignore[no-untyped-def]
        return make_session(model, threads=self.target.threads, reference=self.reference)

    def outputs(self, model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
        return run_model(self.session(model), x)


class _Skip(Exception):
    """A pass the user's --recipe patterns leave out."""


def _torch_parents(source: Source, splits: Splits, opts: SearchOptions, log: Log) -> list[tuple[str, str, onnx.ModelProto, int, list[dict[str, Any]]]]:
    """Structured-pruned and distilled fp32 models (only for zoo models, which carry their torch module)."""
    from edgewise.optimize.distill import distill, pick_student_width
    from edgewise.optimize.prune import structured_prune
    from edgewise.zoo import TrainConfig, count_params
    from edgewise.zoo.export import export_onnx

    tm = source.trained
    out = []
    with tempfile.TemporaryDirectory(prefix="edgewise-torch-") as tmp:
        try:
            if not opts.wants_parent("pruned"):
                raise _Skip
            log(f"structured pruning (keep {opts.prune_keep:.0%} of channels) + fine-tuning")
            ft = TrainConfig(epochs=opts.finetune_epochs, lr=1e-3, min_steps=opts.finetune_min_steps)
            pruned = structured_prune(tm.module, opts.prune_keep, splits, ft)
            model = export_onnx(pruned, tm.sample_shape, Path(tmp) / "pruned.onnx")
            desc = f"structured pruning: {tm.params:,} -> {count_params(pruned):,} params, fine-tuned"
            out.append(("pruned", desc, model, count_params(pruned),
                        [{"pass": "prune", "kind": "structured-channel", "keep_ratio": opts.prune_keep,
                          "params_before": tm.params, "params_after": count_params(pruned),
                          "finetune_epochs": ft.epochs_for(len(splits.train))}]))
        except _Skip:
            pass
        except EdgewiseError as e:
            log(f"structured pruning skipped: {e}")
        try:
            if not opts.wants_parent("distilled"):
                raise _Skip
            width = pick_student_width(tm.arch, tm.sample_shape, len(tm.labels), tm.params)
            log(f"distilling a {tm.arch} student (width {width}) from the model")
            cfg = TrainConfig(epochs=opts.distill_epochs, min_steps=opts.distill_min_steps)
            student = distill(tm.module, tm.arch, width, splits, cfg)
            model = export_onnx(student, tm.sample_shape, Path(tmp) / "student.onnx")
            desc = f"distilled {tm.arch} student, width {width}: {count_params(student):,} params"
            out.append(("distilled", desc, model, count_params(student),
                        [{"pass": "distill", "student": tm.arch, "width": width, "temperature": 2.0,
                          "alpha": 0.5, "teacher_params": tm.params, "student_params": count_params(student)}]))
        except _Skip:
            pass
        except EdgewiseError as e:
            log(f"distillation skipped: {e}")
    return out


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer)


def _generate(source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions, runner: _Runner,
              base_val: np.ndarray, result: SearchResult, log: Log) -> list[Candidate]:
    train_x = splits.train.x
    parents = [("baseline", "starting model", source.model, _params(source.model), [])]
    if source.trained is not None and opts.torch_passes:
        parents += _torch_parents(source, splits, opts, log)
    cands: list[Candidate] = []
    for parent, pdesc, pmodel, nparams, precipe in parents:
        macs = count_macs(pmodel)
        primary = parent == "baseline"
        if parent != "baseline":
            cands.append(Candidate(f"{parent}-fp32", pdesc, parent, "fp32", precipe, pmodel, macs, nparams))
        if "fp32" in target.precisions:
            try:
                fused, info = fuse(pmodel)
                cands.append(Candidate(f"{parent}-fused", f"{pdesc}; Conv+BN folded, ORT offline graph optimization",
                                       parent, "fp32", precipe + [{"pass": "fuse", **info}], fused, macs, nparams))
            except EdgewiseError as e:
                cands.append(Candidate(f"{parent}-fused", "fusion", parent, "fp32", precipe, None, macs,
                                       nparams, "rejected", str(e)))
        if not allowed("int8", target) and not allowed("mixed", target):
            continue
        log(f"{parent}: calibrating on {min(len(train_x), opts.calibration_samples)} samples")
        q = Quantizer(pmodel, train_x, opts.calibration_samples)
        try:
            best_cfg: StaticConfig | None = None
            for cfg in static_configs(target, primary):
                cid = f"{parent}-int8-{cfg.method}" + ("-s7" if cfg.reduce_range else "") + (
                    "" if cfg.weights_per_channel else "-per-tensor")
                if cfg == ORT_DEFAULTS and not target.int8_only:
                    cid = f"{parent}-int8-ort-defaults"
                try:
                    model = q.static(cfg)
                    cands.append(Candidate(cid, cfg.label(), parent, "int8",
                                           precipe + [recipe_static(cfg, opts.calibration_samples)], model,
                                           macs, nparams))
                    best_cfg = best_cfg or cfg
                except EdgewiseError as e:
                    cands.append(Candidate(cid, cfg.label(), parent, "int8", precipe, None, macs, nparams,
                                           "rejected", str(e)))
            if primary and best_cfg is not None:
                cands += _primary_extras(q, best_cfg, source, target, opts, runner, base_val, splits, result, log,
                                         macs, nparams)
            if primary and allowed("int8", target) and target.runs_onnxruntime:
                # Dynamic int8 needs no calibration: it reuses the graph the static passes prepared.
                for ops in (("MatMul", "Gemm"), ("Conv", "MatMul", "Gemm")):
                    cid = "baseline-int8-dynamic" + ("-conv" if "Conv" in ops else "")
                    recipe = [{"pass": "quantize", "mode": "dynamic", "weights": "int8", "ops": list(ops)}]
                    desc = f"int8 dynamic ({'+'.join(o.lower() for o in ops)})"
                    try:
                        cands.append(Candidate(cid, desc, parent, "int8", recipe, q.dynamic(ops), macs, nparams))
                    except EdgewiseError as e:
                        cands.append(Candidate(cid, desc, parent, "int8", recipe, None, macs, nparams, "rejected",
                                               str(e)))
        finally:
            q.close()
        if primary and allowed("int4", target) and has_weight_matmul(pmodel):
            recipe = [{"pass": "quantize", "mode": "weight-only", "weights": "int4", "block_size": 32,
                       "symmetric": True, "ops": ["MatMul", "Gemm"]}]
            try:
                cands.append(Candidate("baseline-int4-weights", "int4 weight-only MatMul/Gemm (block 32)", parent,
                                       "int4", recipe, quantize_int4_weights(pmodel), macs, nparams))
            except EdgewiseError as e:
                cands.append(Candidate("baseline-int4-weights", "int4 weight-only", parent, "int4", recipe, None,
                                       macs, nparams, "rejected", str(e)))
    logical = {p[0]: p[2] for p in parents}
    cands = [c for c in cands if opts.wants(c.id)]
    for c in cands:
        c.logical = logical[c.parent]
        if c.model is not None:
            c.model = compact(c.model)
            c.recipe = c.recipe + [{"pass": "compact", "what": "short names, no inferred shapes, no zero int32 zero points"}]
    return cands


def _primary_extras(q: Quantizer, cfg: StaticConfig, source: Source, target: TargetProfile, opts: SearchOptions,
                    runner: _Runner, base_val: np.ndarray, splits: Splits, result: SearchResult, log: Log,
                    macs: int, nparams: int) -> list[Candidate]:
    """Sensitivity, automatic exclusions and mixed precision, all on the starting model."""
    out: list[Candidate] = []
    val_x = splits.val.x
    prepared = onnx.load(str(q.fp32))
    nodes = quantizable_nodes(prepared, cfg.ops)
    if len(nodes) > opts.sensitivity_max_layers:
        result.notes.append(f"sensitivity measured on the first {opts.sensitivity_max_layers} of {len(nodes)} layers")
        nodes = nodes[: opts.sensitivity_max_layers]
    log(f"measuring int8 sensitivity of {len(nodes)} layers")
    try:
        result.sensitivity = layer_sensitivity(q, cfg, lambda m: runner.outputs(m, val_x), base_val, nodes)
    except EdgewiseError as e:
        result.notes.append(f"sensitivity analysis failed: {e}")
    if not allowed("mixed", target):
        return out
    try:
        result.exclusions = auto_exclusions(prepared, q.ranges("minmax"), q.ranges("percentile"))
    except EdgewiseError as e:
        result.notes.append(f"automatic exclusion analysis failed: {e}")
    if result.exclusions:
        ex = replace(cfg, exclude=tuple(sorted(result.exclusions)))
        try:
            out.append(Candidate("baseline-mixed-auto", ex.label() + " (auto: output-adjacent / high-range)",
                                 "baseline", "mixed", [recipe_static(ex, opts.calibration_samples)],
                                 q.static(ex), macs, nparams))
        except EdgewiseError as e:
            result.notes.append(f"auto-exclusion candidate failed: {e}")
    if result.sensitivity:
        base_score = evaluate(base_val, splits.val.y, base_val).score

        def acceptable(model: onnx.ModelProto) -> bool:
            fid = evaluate(runner.outputs(model, val_x), splits.val.y, base_val)
            return (base_score - fid.score) * 100 <= opts.max_accuracy_drop

        plain = q.static(cfg)
        if not acceptable(plain):
            log("int8 misses the tolerance: keeping the most sensitive layers in float")
            found = mixed_precision(q, cfg, result.sensitivity, acceptable)
            if found is not None:
                model, keep = found
                mcfg = replace(cfg, exclude=keep)
                out.append(Candidate("baseline-mixed-sensitivity", mcfg.label() + " (by sensitivity)", "baseline",
                                     "mixed", [recipe_static(mcfg, opts.calibration_samples)], model, macs, nparams))
            else:
                result.notes.append("mixed precision: no layer set within the tolerance was found")
    return out


def _measure(cands: list[Candidate], baseline: Candidate, target: TargetProfile, opts: SearchOptions,
             runner: _Runner, splits: Splits, base_val: np.ndarray, log: Log) -> None:
    val = splits.val
    base_score = evaluate(base_val, val.y, base_val).score
    ok: list[Candidate] = []
    for c in [baseline] + cands:
        if c.status != "ok" or c.model is None:
            continue
        try:
            fid = evaluate(runner.outputs(c.model, val.x), val.y, base_val)
        except EdgewiseError as e:  # every candidate must load and run before it is offered
            c.status, c.reason = "rejected", str(e)
            continue
        size = len(c.model.SerializeToString())
        int8_act = c.precision == "int8" and any(s.get("mode") == "static" for s in c.recipe)
        c.metrics.update({
            "accuracy": fid.accuracy, "top1_agreement": fid.top1_agreement, "cosine": fid.cosine,
            "score": fid.score, "accuracy_drop_points": (base_score - fid.score) * 100,
            "size_bytes": size, "weight_bytes": weight_bytes(c.model),
            "arena_estimate_bytes": live_tensor_peak(c.logical or c.model, 1 if int8_act else 4),
            "macs": c.macs, "energy_uj_estimate": c.macs * target.energy_pj_per_mac * 1e-6,
        })
        ok.append(c)
    if target.runs_onnxruntime:
        log(f"measuring batch-1 latency of {len(ok)} candidates, interleaved ({opts.latency_runs} runs each)")
        stats = measure_latency([runner.session(c.model) for c in ok], val.x[0], runs=opts.latency_runs)
        for c, s in zip(ok, stats):
            c.metrics["latency_ms"] = s.as_dict()
            c.metrics["latency_p50_ms"] = s.p50_ms
            c.metrics["latency_source"] = "measured (ONNX Runtime, this machine)"
        if opts.measure_memory:
            log("measuring peak memory in a fresh process per candidate")
            with tempfile.TemporaryDirectory(prefix="edgewise-mem-") as tmp:
                for c in ok:
                    path = Path(tmp) / f"{c.id}.onnx"
                    onnx.save(c.model, str(path))
                    try:
                        c.metrics["peak_memory_bytes"] = measure_memory(path, max(1, target.threads))["rss_delta_bytes"]
                    except EdgewiseError as e:
                        c.metrics["peak_memory_bytes"] = None
                        c.reason = f"memory probe failed: {e}"
    else:
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


def _violations(c: Candidate, target: TargetProfile, opts: SearchOptions, is_baseline: bool) -> list[str]:
    m = c.metrics
    v: list[str] = []
    if not allowed(c.precision, target):
        v.append(f"precision {c.precision} not allowed on {target.name} ({', '.join(target.precisions)})")
    if not is_baseline and m["accuracy_drop_points"] > opts.max_accuracy_drop + 1e-9:
        v.append(f"accuracy drop {m['accuracy_drop_points']:.2f} points > {opts.max_accuracy_drop:g}")
    flash = m.get("flash_bytes", m["size_bytes"])
    if flash > target.flash_bytes:
        v.append(f"needs {_kb(flash)} flash, target has {_kb(target.flash_bytes)}")
    ram = m.get("peak_memory_bytes")
    if ram is not None and ram > target.ram_bytes:
        v.append(f"needs {_kb(ram)} RAM, target has {_kb(target.ram_bytes)}")
    if m["latency_p50_ms"] > target.latency_budget_ms:
        v.append(f"latency {m['latency_p50_ms']:.2f} ms > budget {target.latency_budget_ms:g} ms")
    return v


def _point(c: Candidate) -> tuple[float, float, float, float]:
    m = c.metrics
    return (m["score"], float(m.get("flash_bytes", m["size_bytes"])), m["latency_p50_ms"],
            float(m.get("peak_memory_bytes") or 0))


def search(source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions | None = None,
           log: Log = lambda _m: None) -> SearchResult:
    opts = opts or SearchOptions()
    runner = _Runner(target)
    base_val = runner.outputs(source.model, splits.val.x)
    baseline = Candidate("baseline-fp32", "starting model, as given", "baseline", "fp32", [], source.model,
                         count_macs(source.model), _params(source.model))
    result = SearchResult(target, baseline, [], None, "")
    if not target.runs_onnxruntime:
        result.notes.append("latency is estimated from MACs; it was not measured on the device")
    result.candidates = _generate(source, splits, target, opts, runner, base_val, result, log)
    _measure(result.candidates, baseline, target, opts, runner, splits, base_val, log)
    measured = [c for c in [baseline] + result.candidates if c.status == "ok" and "score" in c.metrics]
    for i in pareto_front([_point(c) for c in measured]):
        measured[i].pareto = True
    feasible = [c for c in measured if c.feasible]
    if target.objective == "latency" and allowed("fp32", target) and baseline.status == "ok":
        # Never ship a model slower than the one we started from.
        base_ms = baseline.metrics["latency_p50_ms"]
        feasible = [c for c in feasible if c.metrics["latency_p50_ms"] <= base_ms]
    if feasible:
        result.chosen = feasible[choose([_point(c) for c in feasible], target.objective)]
        result.why = _why(result.chosen, baseline, target)
    else:
        result.why = _nothing_fits(measured, target)
    return result


def _why(c: Candidate, baseline: Candidate, target: TargetProfile) -> str:
    m, b = c.metrics, baseline.metrics
    speed = b["latency_p50_ms"] / max(m["latency_p50_ms"], 1e-9)
    size = b["size_bytes"] / max(m["size_bytes"], 1)
    return (f"{c.id}: best {target.objective} among candidates that fit {target.name} "
            f"({speed:.2f}x the starting model's speed, {size:.2f}x smaller, "
            f"{m['accuracy_drop_points']:+.2f} points accuracy drop on validation)")


def _nothing_fits(measured: list[Candidate], target: TargetProfile) -> str:
    if not measured:
        return f"no candidate could be built and run for {target.name}"
    closest = min(measured, key=lambda c: (len(c.violations), c.metrics.get("accuracy_drop_points", 1e9)))
    return f"nothing fits {target.name}; closest is {closest.id}: " + "; ".join(closest.violations)


def finalize(result: SearchResult, splits: Splits, runs: int = 300) -> dict[str, Any]:
    """Chosen vs starting model on the held-out test split, and their latency measured side by side."""
    c, b = result.chosen, result.baseline
    if c is None or c.model is None or b.model is None:
        raise OptimizeError(result.why)
    runner = _Runner(result.target)
    test = splits.test
    base_out = runner.outputs(b.model, test.x)
    fid_b = evaluate(base_out, test.y, base_out)
    fid_c = evaluate(runner.outputs(c.model, test.x), test.y, base_out)
    final = {"accuracy": fid_c.score, "baseline_accuracy": fid_b.score,
             "accuracy_kind": "accuracy" if test.y is not None else "top1_agreement_with_fp32",
             "top1_agreement": fid_c.top1_agreement, "cosine": fid_c.cosine,
             "size_bytes": c.metrics["size_bytes"], "baseline_size_bytes": b.metrics["size_bytes"],
             "peak_memory_bytes": c.metrics.get("peak_memory_bytes"),
             "baseline_peak_memory_bytes": b.metrics.get("peak_memory_bytes"),
             "arena_estimate_bytes": c.metrics["arena_estimate_bytes"], "macs": c.macs,
             "energy_uj_estimate": c.metrics["energy_uj_estimate"], "split": "test", "test_samples": len(test)}
    if result.target.runs_onnxruntime:
        sb, sc = measure_latency([runner.session(b.model), runner.session(c.model)], test.x[0], runs=runs)
        if (result.target.objective == "latency" and b.feasible and c is not b
                and sc.p50_ms > sb.p50_ms):
            # A second, longer look before concluding: single measurements on a shared machine are noisy.
            sb, sc = measure_latency([runner.session(b.model), runner.session(c.model)], test.x[0], runs=2 * runs)
            if sc.p50_ms > sb.p50_ms:
                result.notes.append(f"{c.id} measured {sb.p50_ms / sc.p50_ms:.3f}x the starting model's speed in "
                                    "the confirmation run; shipping the starting model instead (never slower)")
                result.chosen = b
                result.why = (f"{b.id}: no candidate beat the starting model's latency on {result.target.name} "
                              "when measured again")
                return finalize(result, splits, runs)
        final.update({"latency_ms": sc.as_dict(), "baseline_latency_ms": sb.as_dict(),
                      "latency_p50_ms": sc.p50_ms, "baseline_latency_p50_ms": sb.p50_ms,
                      "speedup": sb.p50_ms / sc.p50_ms, "latency_threads": result.target.threads or "all"})
    else:
        final.update({"latency_p50_ms": c.metrics["latency_p50_ms"],
                      "baseline_latency_p50_ms": b.metrics["latency_p50_ms"],
                      "latency_source": c.metrics["latency_source"],
                      "flash_bytes": c.metrics["flash_bytes"], "ram_bytes": c.metrics["peak_memory_bytes"]})
    result.final = final
    return final
