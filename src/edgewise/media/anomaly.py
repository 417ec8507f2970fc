"""Anomaly scores from an autoencoder's residual, the threshold that holds a false-alarm rate, and how
well scores separate normal from faulty (AUROC), for training, `optimize`, the agent and the C alike.

An anomaly model's output is its residual: input minus reconstruction, per feature (the zoo's autoencoder
computes it inside the graph, so one int8 model carries it to the MCU). The score is the residual's mean
square; a window is an anomaly when its score exceeds the threshold calibrated on held-out normal windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgewise.errors import DataError


def scores(residual: np.ndarray) -> np.ndarray:
    """[N, ...] residuals -> [N] mean squares."""
    r = np.asarray(residual, np.float64)
    return (r.reshape(len(r), -1) ** 2).mean(1)


def threshold(normal_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score that `false_alarm_rate` of normal windows exceed (linear interpolation between them)."""
    if not 0 < false_alarm_rate < 1:
        raise DataError(f"the false-alarm rate must be between 0 and 1, got {false_alarm_rate}")
    s = np.asarray(normal_scores, np.float64)
    if len(s) == 0:
        raise DataError("no normal windows to calibrate the anomaly threshold on")
    return float(np.quantile(s, 1.0 - false_alarm_rate))


def auroc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """Probability that an anomaly scores above a normal window (ties count half): the Mann-Whitney U."""
    a, b = np.asarray(normal_scores, np.float64), np.asarray(anomaly_scores, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise DataError("AUROC needs both normal and anomalous windows")
    both = np.concatenate([a, b])
    order = both.argsort(kind="mergesort")
    _, first, counts = np.unique(both[order], return_index=True, return_counts=True)
    ranks = np.empty(len(both))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # tied values share their mean rank
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def evaluate(s: np.ndarray, is_anomaly: np.ndarray, thr: float) -> dict[str, Any]:
    """AUROC (when both kinds are present), false-alarm rate on the normal windows and detection rate on
    the anomalous ones at threshold `thr`."""
    s, bad = np.asarray(s, np.float64), np.asarray(is_anomaly, bool)
    out: dict[str, Any] = {"threshold": thr, "normal_windows": int((~bad).sum()), "anomaly_windows": int(bad.sum())}
    if (~bad).any():
        out["false_alarm_rate"] = float((s[~bad] > thr).mean())
    if bad.any():
        out["detection_rate"] = float((s[bad] > thr).mean())
    if bad.any() and (~bad).any():
        out["auroc"] = auroc(s[~bad], s[bad])
    return out


def normal_index(labels: list[str], preprocessing: dict[str, Any]) -> int:
    """Which class is normal operation: the dataset's `normal_class`, a label named normal/ok/healthy, or
    the only class."""
    named = preprocessing.get("normal_class")
    for cand in ([named] if named else []) + ["normal", "ok", "healthy", "good", "nominal"]:
        hit = [i for i, n in enumerate(labels) if n.lower() == str(cand).lower()]
        if hit:
            return hit[0]
    if len(labels) <= 1:
        return 0
    raise DataError(f"which class is normal operation? None of the labels ({', '.join(labels)}) is called "
                    "`normal`: rename it, or train on a recording of normal running only")


def answer(residual: np.ndarray, post: dict[str, Any]) -> dict[str, Any]:
    """The agent's answer for one window: `anomaly`, `score`, `threshold` and a `label`."""
    try:
        thr = float(post["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"the bundle's anomaly postprocessing has no threshold ({e})") from e
    s = float(scores(np.asarray(residual)[None] if np.ndim(residual) == 1 else residual)[0])
    bad = s > thr
    return {"anomaly": bool(bad), "label": "anomaly" if bad else "normal", "score": s, "threshold": thr}


__all__ = ["answer", "auroc", "evaluate", "normal_index", "scores", "threshold"]
