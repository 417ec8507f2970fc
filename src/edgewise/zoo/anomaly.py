"""Anomaly detection trained on normal running only: an autoencoder over the spectral features of sensor
windows, scored by its reconstruction error, with the threshold set for a target false-alarm rate.

Failures are rare and unlabelled, so the model learns what normal looks like; a window it cannot
reconstruct is an anomaly. The network outputs its residual (input minus reconstruction) so the score
needs no second copy of the input on the device: its mean square (`media.anomaly.scores`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgewise.data import Dataset, Splits
from edgewise.errors import DataError
from edgewise.media import anomaly as an
from edgewise.media.spectral import SpectralSpec, as_logged, features, fit

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
    fit_on = as_logged(train.x, train.preprocessing) if normal is None or train.y is None else as_logged(train.x, train.preprocessing)[train.y == normal]
    spec = fit(spec, fit_on)
    pre = {**pre, "layout": "features", "spectral": spec.as_dict(), "feature_names": spec.feature_names()}

    def conv(ds: Dataset) -> Dataset:
        return Dataset(ds.name, features(spec, as_logged(ds.x, ds.preprocessing)), ds.y, ds.labels, pre, groups=ds.groups)

    return Splits(conv(splits.train), conv(splits.val), conv(splits.test))


def fit_anomaly(module: nn.Module, splits: Splits, cfg: Any, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                on_epoch: Any = None) -> dict[str, Any]:
    """Train on the normal windows of train (validation: their mean score on val, lower is better);
    calibrate the threshold on val's normal windows; evaluate on test (AUROC when it holds faults)."""
    from edgewise.zoo.train import _train_loop, predict_logits

    tr, val = splits.train, splits.val
    normal = an.normal_index(tr.labels, tr.preprocessing)
    x = torch.from_numpy(tr.x if tr.y is None else tr.x[tr.y == normal])
    xv = val.x if val.y is None else val.x[val.y == normal]
    if len(x) < 8 or len(xv) < 4:
        raise DataError(f"anomaly training needs normal windows: {len(x)} in train and {len(xv)} in validation")

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = x[idx]
        noisy = xb + 0.05 * torch.randn(xb.shape, generator=gen)  # denoising: a smoother notion of normal
        return ((xb + module.decoder(module.encoder(noisy))) ** 2).mean()  # clean input - its reconstruction

    _train_loop(module, cfg, len(x), batch_loss, lambda: -float(an.scores(predict_logits(module, xv)).mean()),
                "val_score", on_epoch)
    thr = an.threshold(an.scores(predict_logits(module, xv)), false_alarm_rate)
    metrics: dict[str, Any] = {"false_alarm_target": false_alarm_rate, "threshold": thr}
    te = splits.test
    s = an.scores(predict_logits(module, te.x))
    bad = np.zeros(len(te), bool) if te.y is None else te.y != normal
    metrics.update({f"test_{k}": v for k, v in an.evaluate(s, bad, thr).items() if k != "threshold"})
    if te.y is not None:
        metrics["test_detection_by_class"] = {te.labels[c]: float((s[te.y == c] > thr).mean())
                                              for c in np.unique(te.y) if c != normal}
    return metrics


def anomaly_postprocessing(metrics: dict[str, Any], normal_label: str) -> dict[str, Any]:
    return {"kind": "anomaly", "score": "mean_square", "threshold": float(metrics["threshold"]),
            "false_alarm_rate": float(metrics["false_alarm_target"]), "normal_label": normal_label}


__all__ = ["DEFAULT_FALSE_ALARM_RATE", "AutoEncoder", "anomaly_postprocessing", "autoencoder", "fit_anomaly",
           "spectral_splits"]
