"""Choose cascade thresholds on validation data: forward as little as possible while the cascade's
end-to-end accuracy stays within a tolerance of the top tier answering everything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import AgentError


@dataclass
class CascadePlan:
    thresholds: list[float]  # one per tier below the top, bottom first
    shares: list[float]  # fraction of samples answered at each tier, bottom first (sums to 1)
    accuracy: float
    top_accuracy: float


def simulate(probs: list[np.ndarray], y: np.ndarray, thresholds: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Which tier answers each sample, and its predicted class, for given thresholds (bottom first)."""
    n = len(y)
    tier = np.full(n, len(probs) - 1)
    pred = probs[-1].argmax(1)
    undecided = np.ones(n, dtype=bool)
    for t, (p, thr) in enumerate(zip(probs[:-1], thresholds)):
        take = undecided & (p.max(1) >= thr)
        tier[take] = t
        pred = np.where(take, p.argmax(1), pred)
        undecided &= ~take
    return tier, pred


def calibrate(probs: list[np.ndarray], y: np.ndarray, max_drop_points: float = 0.5,
              grid: int = 41) -> CascadePlan:
    """Search each lower tier's threshold over confidence quantiles, bottom tier first, keeping the
    plan that answers most at the bottom while end-to-end accuracy >= top accuracy - tolerance.

    Ties go to the plan that answers more at the next tier up (less traffic to the top).
    """
    top_acc = float((probs[-1].argmax(1) == y).mean())
    floor = top_acc - max_drop_points / 100
    candidates = [np.unique(np.concatenate([[1.01], np.quantile(p.max(1), np.linspace(0, 1, grid))])) for p in probs[:-1]]
    best: tuple[tuple[float, ...], list[float], np.ndarray, float] | None = None

    def search(level: int, chosen: list[float]) -> None:
        nonlocal best
        if level == len(probs) - 1:
            tier, pred = simulate(probs, y, chosen)
            acc = float((pred == y).mean())
            if acc < floor:
                return
            shares = np.bincount(tier, minlength=len(probs)) / len(y)
            key = tuple(shares[:-1])  # lexicographic: most at the bottom, then at the next tier
            if best is None or key > best[0]:
                best = (key, list(chosen), shares, acc)
            return
        for thr in candidates[level]:
            search(level + 1, chosen + [float(thr)])

    search(0, [])
    assert best is not None  # thresholds above 1 send everything to the top, which always qualifies
    _, thresholds, shares, acc = best
    return CascadePlan(thresholds, shares.tolist(), acc, top_acc)


TIER_NAMES = ("endpoint", "node", "server")
ESCALATE = ("none", "raw", "features")


@dataclass
class CascadeCalibration:
    """Thresholds chosen on the validation split and what they do on the test split, tier by tier."""

    plan: CascadePlan
    tiers: list[dict[str, Any]]  # name, threshold (None for the top), share_val, share_test, accuracy_test
    test_accuracy: float
    top_test_accuracy: float


def calibrate_bundles(bundles: list[Path], data: str, max_drop_points: float = 0.5) -> CascadeCalibration:
    """Score every tier's bundle on DATA's validation and test splits and choose the thresholds."""
    from edgewise.agent.serve.cascade import probabilities
    from edgewise.data import load_splits
    from edgewise.modelio import image_size
    from edgewise.profile import make_session, run_model
    from edgewise.source import fit_data, load_source

    if len(bundles) < 2:
        raise AgentError("calibration needs at least two tiers (--bundle given twice or more)")
    sources = [load_source(b) for b in bundles]
    splits = load_splits(data, size=image_size(sources[0].model))  # images without a size: the first tier's
    if splits.val.y is None or splits.test.y is None:
        raise AgentError("calibration needs labelled data")
    probs: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for source in sources:
        src, sp = fit_data(source, splits)
        sess = make_session(src.model)
        for part in ("val", "test"):
            probs[part].append(probabilities(run_model(sess, getattr(sp, part).x)))
    plan = calibrate(probs["val"], splits.val.y, max_drop_points)
    names = list(TIER_NAMES[: len(bundles)]) if len(bundles) <= 3 else [f"tier{i}" for i in range(len(bundles))]
    y = splits.test.y
    tier, pred = simulate(probs["test"], y, plan.thresholds)
    tiers = []
    for t, name in enumerate(names):
        mask = tier == t
        tiers.append({"name": name, "threshold": plan.thresholds[t] if t < len(plan.thresholds) else None,
                      "share_val": plan.shares[t], "share_test": float(mask.mean()),
                      "accuracy_test": float((pred[mask] == y[mask]).mean()) if mask.any() else None})
    return CascadeCalibration(plan, tiers, float((pred == y).mean()), float((probs["test"][-1].argmax(1) == y).mean()))


def write_configs(cal: CascadeCalibration, bundles: list[Path], data: str, out_dir: Path,
                  escalate: str = "none") -> list[Path]:
    """One agent.toml per tier below the top, with its threshold; `escalate` stays "none" (the privacy
    default) unless asked."""
    from edgewise.fsutil import atomic_write

    if escalate not in ESCALATE:
        raise AgentError(f"escalate must be one of {', '.join(ESCALATE)}, got {escalate!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t, tier in enumerate(cal.tiers[:-1]):
        name = tier["name"]
        text = (f'# written by `edgewise cascade calibrate` on {data}\n'
                f'tier = "{name if name in ("endpoint", "node") else "node"}"\n'
                f'bundles = ["{bundles[t]}"]\n\n[privacy]\n'
                '# "none" keeps inputs on the device (the default); "raw" or "features" lets the cascade forward '
                f'unsure ones\nescalate = "{escalate}"\n\n[cascade]\ndefault_threshold = {tier["threshold"]:.6f}\n')
        path = out_dir / f"{name}.toml"
        atomic_write(path, text.encode())
        written.append(path)
    return written
