"""Choose cascade thresholds on validation data: forward as little as possible while the cascade's
end-to-end accuracy stays within a tolerance of the top tier answering everything."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
