"""Choose: hard limits (the device's, the user's budgets) reject; the profile's latency only ranks; the
Pareto front is marked; nothing slower than the starting model ships on a latency target."""

from __future__ import annotations

from edgewise.optimize.candidates import Candidate, allowed
from edgewise.optimize.options import SearchOptions, SearchResult
from edgewise.optimize.pareto import choose, pareto_front
from edgewise.profile.fidelity import label
from edgewise.targets import TargetProfile


def kb(n: float) -> str:
    return f"{n / 1024:,.0f} KB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


def violations_of(c: Candidate, target: TargetProfile, opts: SearchOptions, is_baseline: bool) -> list[str]:
    """What a candidate lacks against the hard limits: the device's, and the budgets the user set."""
    m = c.metrics
    v: list[str] = []
    if not allowed(c.precision, target):
        v.append(f"{c.precision} not allowed (runs {', '.join(target.precisions)})")
    if not is_baseline and not opts.within_tolerance(m["accuracy_drop_points"]):
        v.append(f"{label(m['fidelity_kind'])} drop {m['accuracy_drop_points']:.2f} points > "
                 f"{opts.max_accuracy_drop:g}")
    flash = m.get("flash_bytes", m["size_bytes"])
    if flash > target.flash_bytes:
        v.append(f"needs {kb(flash)} flash, target has {kb(target.flash_bytes)}")
    if opts.max_flash_bytes is not None and flash > opts.max_flash_bytes:
        v.append(f"needs {kb(flash)} flash > --max-flash-kb {opts.max_flash_bytes / 1024:g}")
    ram = m.get("peak_memory_bytes")
    if ram is not None and ram > target.ram_bytes:
        v.append(f"needs {kb(ram)} RAM, target has {kb(target.ram_bytes)}")
    if ram is not None and opts.max_ram_bytes is not None and ram > opts.max_ram_bytes:
        v.append(f"needs {kb(ram)} RAM > --max-ram-kb {opts.max_ram_bytes / 1024:g}")
    if opts.max_latency_ms is not None and m["latency_p50_ms"] > opts.max_latency_ms:
        v.append(f"latency {m['latency_p50_ms']:.2f} ms > --max-latency-ms {opts.max_latency_ms:g}")
    return v


def point(c: Candidate) -> tuple[float, float, float, float]:
    m = c.metrics
    return (m["score"], float(m.get("flash_bytes", m["size_bytes"])), m["latency_p50_ms"],
            float(m.get("peak_memory_bytes") or 0))


def decide(result: SearchResult, opts: SearchOptions) -> None:
    target, baseline = result.target, result.baseline
    measured = [c for c in [baseline] + result.candidates if c.status == "ok" and "latency_p50_ms" in c.metrics]
    for i in pareto_front([point(c) for c in measured]):
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
        result.chosen = pool[choose([point(c) for c in pool], target.objective)]
        result.why = why_chosen(result.chosen, baseline, target)
    else:
        result.why = nothing_fits(measured, target)


def why_chosen(c: Candidate, baseline: Candidate, target: TargetProfile) -> str:
    m, b = c.metrics, baseline.metrics
    size = b["size_bytes"] / max(m["size_bytes"], 1)
    if target.runs_onnxruntime:
        speed = f"{b['latency_p50_ms'] / max(m['latency_p50_ms'], 1e-9):.2f}x the starting model's measured speed"
    else:
        speed = f"estimated {m['latency_p50_ms']:.1f} ms from MACs"
    kind = label(m["fidelity_kind"])
    return (f"{c.id}: best {target.objective} among candidates that fit {target.name} "
            f"({speed}, {f'{size:.2f}x smaller' if size >= 1 else f'{1 / size:.2f}x larger'}, "
            f"{m['accuracy_drop_points']:+.2f} points {kind} drop on validation)")


def closest(measured: list[Candidate], n: int = 3) -> list[Candidate]:
    """The candidates nearest to fitting: fewest violations, then smallest fidelity drop."""
    scored = [c for c in measured if c.status == "ok" and c.violations]
    return sorted(scored, key=lambda c: (len(c.violations), c.metrics.get("accuracy_drop_points", 1e9)))[:n]


def nothing_fits(measured: list[Candidate], target: TargetProfile) -> str:
    near = closest(measured, 1)
    if not near:
        return f"no candidate could be built and run for {target.name}"
    return f"nothing fits {target.name}; closest is {near[0].id}: " + "; ".join(near[0].violations)
