"""Pareto front and choice of the best feasible candidate: pure functions over measured figures."""

from __future__ import annotations

from collections.abc import Sequence

# Objectives: higher score, smaller size, lower latency, lower memory.
Point = tuple[float, float, float, float]


def dominates(a: Point, b: Point) -> bool:
    """a dominates b: no worse on every axis (score up, others down) and better on at least one."""
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    better = a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:]))
    return no_worse and better


def pareto_front(points: Sequence[Point]) -> list[int]:
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def choose(points: Sequence[Point], objective: str, tie: float = 0.03) -> int:
    """Index of the best point for the objective. Near-ties (within `tie`, relative: the noise of a measurement)
    go to the higher score first, so no accuracy is given up for a difference nobody could measure; then to
    the next axis.

    latency: lowest latency, then highest score, then smallest size; size: smallest size, then highest score,
    then lowest latency; accuracy: highest score, then lowest latency.
    """
    if not points:
        raise ValueError("no candidates to choose from")
    axis, then = {"latency": (2, 1), "size": (1, 2), "accuracy": (0, 2)}[objective]
    if axis == 0:
        best = max(p[0] for p in points)
        near = [i for i, p in enumerate(points) if p[0] >= best - 1e-9]
    else:
        best = min(p[axis] for p in points)
        near = [i for i, p in enumerate(points) if p[axis] <= best * (1 + tie)]
    return min(near, key=lambda i: (-round(points[i][0], 9), points[i][then]))
