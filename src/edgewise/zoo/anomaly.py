"""Anomaly detection trained on normal running only: an autoencoder over the spectral features of sensor
windows, scored by its reconstruction error, with the threshold set for a target false-alarm rate.

Failures are rare and unlabelled, so the model learns what normal looks like; a window it cannot
reconstruct is an anomaly. The network outputs its residual (input minus reconstruction) so the score
needs no second copy of the input on the device: its mean square (`media.anomaly.scores`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from edgewise.data import Splits
from edgewise.errors import DataError
from edgewise.media import anomaly as an
from edgewise.media.spectral import SpectralSpec, as_logged, fit
from edgewise.source import through_spectral

DEFAULT_FALSE_ALARM_RATE = 0.01


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class AutoEncoder(nn.Module):
    """features -> hidden -> bottleneck -> hidden -> features; `forward` returns input + decoder output,
    which training drives to zero on normal data: the decoder learns minus the reconstruction, so the
    output is the residual and the exported graph ends in one Add."""

    def __init__(self, n: int, width: float = 1.0) -> None:
        super().__init__()
        h, b = _ch(32, width), _ch(8, width)
        self.encoder = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, b), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(b, h), nn.ReLU(), nn.Linear(h, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.decoder(self.encoder(x))


def autoencoder(shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    del classes  # the output is the residual, one value per feature
    if len(shape) != 1:
        raise DataError(f"autoencoder needs feature vectors; got sample shape {shape} (sensor windows go through "
                        "the spectral front end first)")
    return AutoEncoder(int(shape[0]), width)


def spectral_splits(splits: Splits, normal: int | None = None, **settings: Any) -> Splits:
    """Splits of raw windows -> splits of standardized spectral features; the front end is fitted on the
    training windows (of class `normal` only, when given) and recorded in each part's preprocessing."""
    train = splits.train
    pre = {k: v for k, v in train.preprocessing.items() if k not in ("standardize", "mean", "std")}
    spec = SpectralSpec.for_windows(pre, train.sample_shape, **settings)
    raw = as_logged(train.x, train.preprocessing)
    spec = fit(spec, raw if normal is None or train.y is None else raw[train.y == normal])
    pre = {**pre, "layout": "features", "spectral": spec.as_dict(), "feature_names": spec.feature_names()}
    return through_spectral(pre, splits)


def _fit_one(module: nn.Module, x: np.ndarray, xv: np.ndarray, cfg: Any, on_epoch: Any) -> None:
    """Denoising autoencoder training on normal windows `x`; keeps the epoch whose mean score on `xv` is lowest."""
    from edgewise.zoo.train import _train_loop, predict_logits

    xt = torch.from_numpy(np.ascontiguousarray(x))

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = xt[idx]
        noisy = xb + 0.05 * torch.randn(xb.shape, generator=gen)  # denoising: a smoother notion of normal
        return ((xb + module.decoder(module.encoder(noisy))) ** 2).mean()  # clean input - its reconstruction

    _train_loop(module, cfg, len(xt), batch_loss, lambda: -float(an.scores(predict_logits(module, xv)).mean()),
                "val_score", on_epoch)


def fit_anomaly(build: Callable[[], nn.Module], splits: Splits, cfg: Any,
                false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, on_epoch: Any = None,
                folds: int = 3) -> tuple[nn.Module, dict[str, Any]]:
    """Train on the normal windows of train and validation; evaluate on test (AUROC when it holds faults).

    The threshold is the score `false_alarm_rate` of normal windows exceed, among windows the model did not
    train on and that are not the neighbours of ones it did: with groups (recordings, blocks of neighbouring
    windows), `folds` models each trained without one share of the groups score that share, and the final
    model trains on all of them. Without groups, validation's normal windows calibrate it."""
    from edgewise.zoo.train import predict_logits

    tr, val = splits.train, splits.val
    normal = an.normal_index(tr.labels, tr.preprocessing)
    keep_t = np.ones(len(tr), bool) if tr.y is None else tr.y == normal
    keep_v = np.ones(len(val), bool) if val.y is None else val.y == normal
    if keep_t.sum() < 8 or keep_v.sum() < 4:
        raise DataError(f"anomaly training needs normal windows: {int(keep_t.sum())} in train and "
                        f"{int(keep_v.sum())} in validation")
    x = np.concatenate([tr.x[keep_t], val.x[keep_v]])
    groups = (np.concatenate([tr.groups[keep_t], val.groups[keep_v]])
              if tr.groups is not None and val.groups is not None else None)
    names = sorted(set(groups.tolist())) if groups is not None else []
    epochs = cfg.epochs_for(len(x))
    metrics: dict[str, Any] = {"false_alarm_target": false_alarm_rate}
    if len(names) > folds:
        rng = np.random.default_rng(cfg.seed)
        fold_of = {g: i % folds for i, g in enumerate(rng.permutation(names).tolist())}
        fold = np.array([fold_of[g] for g in groups.tolist()])
        held_scores = []
        for k in range(folds):
            m = build()
            hook = (lambda e, _t, mm, k=k: on_epoch(k * epochs + e, (folds + 1) * epochs, mm)) if on_epoch else None
            _fit_one(m, x[fold != k], x[fold == k], cfg, hook)
            held_scores.append(an.scores(predict_logits(m, x[fold == k])))
        thr = an.threshold(np.concatenate(held_scores), false_alarm_rate)
        module = build()
        hook = (lambda e, _t, mm: on_epoch(folds * epochs + e, (folds + 1) * epochs, mm)) if on_epoch else None
        _fit_one(module, x, x, cfg, hook)
        metrics["calibration"] = f"{folds}-fold over {len(names)} groups of windows"
    else:
        module = build()
        _fit_one(module, tr.x[keep_t], val.x[keep_v], cfg, on_epoch)
        thr = an.threshold(an.scores(predict_logits(module, val.x[keep_v])), false_alarm_rate)
        metrics["calibration"] = "validation windows"
    metrics["threshold"] = thr
    te = splits.test
    s = an.scores(predict_logits(module, te.x))
    bad = np.zeros(len(te), bool) if te.y is None else te.y != normal
    metrics.update({f"test_{k}": v for k, v in an.evaluate(s, bad, thr).items() if k != "threshold"})
    if te.y is not None:
        metrics["test_detection_by_class"] = {te.labels[c]: float((s[te.y == c] > thr).mean())
                                              for c in np.unique(te.y) if c != normal}
    return module, metrics


def anomaly_postprocessing(metrics: dict[str, Any], normal_label: str) -> dict[str, Any]:
    return {"kind": "anomaly", "score": "mean_square", "threshold": float(metrics["threshold"]),
            "false_alarm_rate": float(metrics["false_alarm_target"]), "normal_label": normal_label}


__all__ = ["DEFAULT_FALSE_ALARM_RATE", "AutoEncoder", "anomaly_postprocessing", "autoencoder", "fit_anomaly",
           "spectral_splits"]
