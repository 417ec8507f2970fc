"""Training and evaluation of zoo models; keeps the weights that scored best on the validation split."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgewise.data import Dataset, Splits
from edgewise.errors import ModelError
from edgewise.zoo.models import build, count_params

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    min_steps: int = 0  # small datasets get more epochs so the optimizer takes at least this many steps
    augment: bool = False  # series (C, T): random scaling, jitter and time shift per sample (`augment_series`)

    def epochs_for(self, n_train: int) -> int:
        steps_per_epoch = max(1, -(-n_train // self.batch_size))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))


@dataclass
class TrainedModel:
    """A zoo model with what is needed to rebuild it: architecture, width, sample shape, labels."""

    arch: str
    width: float
    sample_shape: tuple[int, ...]
    labels: list[str]
    module: nn.Module
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)  # an anomaly detector's threshold, say

    @property
    def params(self) -> int:
        return count_params(self.module)

    def meta(self) -> dict[str, Any]:
        return {"arch": self.arch, "width": self.width, "sample_shape": list(self.sample_shape),
                "labels": self.labels, "preprocessing": self.preprocessing, "metrics": self.metrics,
                "postprocessing": self.postprocessing, "params": self.params}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.module.state_dict(), out / "checkpoint.pt")
        (out / "train.json").write_text(json.dumps(self.meta(), indent=2))
        from edgewise.zoo.export import export_onnx

        export_onnx(self.module, self.sample_shape, out / "model.onnx")


def load_trained(path: Path) -> TrainedModel:
    """Rebuild a model saved by `TrainedModel.save` (a directory with train.json and checkpoint.pt)."""
    meta_path = path / "train.json"
    if not meta_path.is_file() or not (path / "checkpoint.pt").is_file():
        raise ModelError(f"{path} is not an edgewise training directory (needs train.json + checkpoint.pt)")
    meta = json.loads(meta_path.read_text())
    module = build(meta["arch"], tuple(meta["sample_shape"]), len(meta["labels"]), meta["width"])
    try:
        state = torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except Exception as e:  # torch raises several unrelated types for a bad checkpoint
        raise ModelError(f"{path / 'checkpoint.pt'}: cannot load checkpoint ({e})") from e
    module.eval()
    return TrainedModel(meta["arch"], meta["width"], tuple(meta["sample_shape"]), meta["labels"], module,
                        meta.get("preprocessing", {}), meta.get("metrics", {}), meta.get("postprocessing", {}))


@torch.no_grad()
def predict_logits(module: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    module.eval()
    outs = [module(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def evaluate_torch(module: nn.Module, ds: Dataset) -> float:
    if ds.y is None:
        raise ModelError(f"dataset {ds.name} has no labels to evaluate against")
    return float((predict_logits(module, ds.x).argmax(1) == ds.y).mean())


BatchLoss = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _train_loop(module: nn.Module, cfg: TrainConfig, n: int, batch_loss: BatchLoss, validate: Callable[[], float],
                val_key: str, on_epoch: EpochHook | None) -> float:
    """The loop every zoo model trains with: AdamW + cosine schedule over seeded shuffles of `n` samples,
    `batch_loss(indices, generator)` per batch; keeps the epoch `validate()` scores best, restores its
    weights and returns that score."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs_for(n)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    best: tuple[float, dict[str, Any]] = (-1.0, copy.deepcopy(module.state_dict()))
    for epoch in range(epochs):
        module.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            opt.zero_grad()
            loss = batch_loss(idx, gen)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        val = validate()
        if val > best[0]:
            best = (val, copy.deepcopy(module.state_dict()))
        if on_epoch:
            on_epoch(epoch + 1, epochs, {"loss": total / n, val_key: val})
    module.load_state_dict(best[1])
    module.eval()
    return best[0]


SERIES_MIN_STEPS = 1000  # small sensor sets (tens of windows) converge only with many more steps than epochs


def augment_series(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Windows [B, C, T] as a sensor might have read them: each scaled by N(1, 0.1) per channel, shifted
    in time by up to a tenth of the window (wrapping), with N(0, 0.03) jitter (inputs are standardized)."""
    b, c, t = x.shape
    scale = 1 + 0.1 * torch.randn((b, c, 1), generator=gen)
    shift = torch.randint(-(t // 10), t // 10 + 1, (b,), generator=gen)
    idx = (torch.arange(t)[None, :] - shift[:, None]) % t
    moved = torch.gather(x, 2, idx[:, None, :].expand(b, c, t))
    return moved * scale + 0.03 * torch.randn(x.shape, generator=gen)


def fit(module: nn.Module, splits: Splits, cfg: TrainConfig, loss_fn: LossFn | None = None,
        on_epoch: EpochHook | None = None) -> dict[str, float]:
    """Adam + cosine schedule; returns metrics of the best validation epoch, whose weights it restores."""
    if splits.train.y is None:
        raise ModelError("training needs labels: the dataset has no `y`")
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y)
    loss_of = loss_fn or (lambda logits, _x, target: F.cross_entropy(logits, target))
    series = cfg.augment and x.ndim == 3

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = augment_series(x[idx], gen) if series else x[idx]
        return loss_of(module(xb), xb, y[idx])

    val = _train_loop(module, cfg, len(x), batch_loss, lambda: evaluate_torch(module, splits.val), "val_accuracy",
                      on_epoch)
    return {"val_accuracy": val, "test_accuracy": evaluate_torch(module, splits.test)}


def evaluate_detector(module: nn.Module, ds: Dataset) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 of a detector's boxes against the dataset's ground truth."""
    from edgewise.profile import detection

    if ds.boxes is None:
        raise ModelError(f"dataset {ds.name} has no boxes to evaluate a detector against")
    out = predict_logits(module, ds.x)
    layout = detection.Layout("yolo", 0)
    return detection.against_truth([[o] for o in out], layout, detection.truth(ds.boxes))


def fit_detector(module: nn.Module, splits: Splits, cfg: TrainConfig, on_epoch: EpochHook | None = None
                 ) -> dict[str, float]:
    """AdamW + cosine schedule with random horizontal flips; keeps the epoch with the best validation
    mAP@0.5 (against ground truth) and returns its metrics on the validation and test splits."""
    from edgewise.zoo.detector import flip, loss

    if splits.train.boxes is None:
        raise ModelError("a detector trains on boxes: use a detection set (shapes, or a YOLO-format folder)")
    x = torch.from_numpy(splits.train.x)
    boxes = [torch.from_numpy(b) for b in splits.train.boxes]

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb, bb = flip(x[idx], [boxes[int(j)] for j in idx], torch.rand(len(idx), generator=gen) < 0.5)
        return loss(module, xb, bb)  # type: ignore[arg-type]

    val = _train_loop(module, cfg, len(x), batch_loss, lambda: evaluate_detector(module, splits.val)["map50"],
                      "val_map50", on_epoch)
    test = evaluate_detector(module, splits.test)
    return {"val_map50": val, "test_map50": test["map50"], "test_map50_95": test["map50_95"]}


FEATURES = ("raw", "spectral")


def train(arch: str, splits: Splits, cfg: TrainConfig | None = None, width: float = 1.0,
          on_epoch: EpochHook | None = None, false_alarm_rate: float | None = None,
          features: str | None = None) -> TrainedModel:
    """`features`: for sensor windows, "raw" (the model reads the window; the default for classifiers) or
    "spectral" (the spectral front end's feature vector, for an `mlp`; the default for anomaly detectors)."""
    from edgewise.zoo.models import ANOMALY, DETECTORS

    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    if features is not None and features not in FEATURES:
        raise ModelError(f"unknown features {features!r}: use {' or '.join(FEATURES)}")
    if arch in ANOMALY:
        if features == "raw":
            raise ModelError(f"{arch} reads spectral features of sensor windows, not the raw window")
        return _train_anomaly(arch, splits, cfg, width, on_epoch, false_alarm_rate)
    if features == "spectral":
        from edgewise.zoo.anomaly import spectral_splits

        if len(splits.train.sample_shape) != 2:
            raise ModelError(f"spectral features are computed from sensor windows (channels, samples); "
                             f"{splits.train.name} has samples of shape {splits.train.sample_shape}")
        if arch != "mlp":
            raise ModelError(f"spectral features are one vector per window: train an mlp on them, not {arch}")
        splits = spectral_splits(splits)
    ds = splits.train
    module = build(arch, ds.sample_shape, ds.num_classes, width)
    if len(ds.sample_shape) == 2 and arch not in DETECTORS:  # sensor windows: augment, and train to convergence
        from dataclasses import replace

        cfg = replace(cfg, augment=True, min_steps=cfg.min_steps or SERIES_MIN_STEPS)
    if arch in DETECTORS:
        metrics = fit_detector(module, splits, cfg, on_epoch=on_epoch)
    elif ds.boxes is not None:
        raise ModelError(f"{ds.name} is a detection set (boxes, no class per image): train a detector on it "
                         f"({', '.join(DETECTORS)})")
    else:
        metrics = fit(module, splits, cfg, on_epoch=on_epoch)
    return TrainedModel(arch, width, ds.sample_shape, ds.labels, module, ds.preprocessing, metrics)



def _train_anomaly(arch: str, splits: Splits, cfg: TrainConfig, width: float, on_epoch: EpochHook | None,
                   false_alarm_rate: float | None) -> TrainedModel:
    """An anomaly detector on normal windows only; raw sensor windows go through the spectral front end."""
    from edgewise.media.anomaly import normal_index
    from edgewise.zoo import anomaly

    normal = normal_index(splits.train.labels, splits.train.preprocessing)
    if len(splits.train.sample_shape) == 2:
        splits = anomaly.spectral_splits(splits, normal if splits.train.y is not None else None)
    ds = splits.train
    far = anomaly.DEFAULT_FALSE_ALARM_RATE if false_alarm_rate is None else false_alarm_rate
    module, metrics = anomaly.fit_anomaly(lambda: build(arch, ds.sample_shape, 0, width), splits, cfg, far, on_epoch)
    labels = ds.labels or ["normal"]
    post = anomaly.anomaly_postprocessing(metrics, labels[normal] if normal < len(labels) else "normal")
    return TrainedModel(arch, width, ds.sample_shape, labels, module, ds.preprocessing, metrics, post)
