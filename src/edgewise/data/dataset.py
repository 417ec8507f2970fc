"""The in-memory dataset and its seeded, stratified train/validation/test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgewise.errors import DataError


@dataclass
class Dataset:
    """Samples `x` (float32, batch first) with optional integer labels `y`.

    `preprocessing` records what was applied to raw readings to get `x`, so a device can repeat it.

    Multi-input models take `named` data instead: one array per model input name, samples stacked on a
    new leading axis, so sample i is the complete feed `{name: named[name][i]}` (any batch dimension the
    model has included, dtypes kept). `x` is then the first of those arrays.

    Detection data has `boxes` instead of `y`: per image an array [K, 5] of (class, x1, y1, x2, y2) in the
    model input's pixels (K may be 0).
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None
    labels: list[str]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    named: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[np.ndarray] | None = None
    groups: np.ndarray | None = None  # who or where each sample came from (a speaker): kept apart by `split`
    texts: list[str] | None = None  # the text each sample shows (a text line): truth for CTC recognizers

    def __post_init__(self) -> None:
        if self.named:
            sizes = {k: len(v) if np.ndim(v) else 0 for k, v in self.named.items()}
            if len(set(sizes.values())) != 1 or 0 in sizes.values():
                raise DataError(f"dataset {self.name!r}: every input needs the same number of samples (> 0) on "
                                f"its leading axis; got " + ", ".join(f"{k}: {n}" for k, n in sizes.items()))
            self.x = next(iter(self.named.values()))
        elif self.x.ndim < 2 or len(self.x) == 0:
            raise DataError(f"dataset {self.name!r} is empty (x has shape {tuple(self.x.shape)})")
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"dataset {self.name!r}: {len(self.x)} samples but {len(self.y)} labels")
        if not self.named:
            self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.int64)
        if self.texts is not None and len(self.texts) != len(self.x):
            raise DataError(f"dataset {self.name!r}: {len(self.x)} samples but texts for {len(self.texts)}")
        if self.boxes is not None:
            if len(self.boxes) != len(self.x):
                raise DataError(f"dataset {self.name!r}: {len(self.x)} images but boxes for {len(self.boxes)}")
            self.boxes = [np.asarray(b, np.float32).reshape(-1, 5) for b in self.boxes]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        if self.labels:
            return len(self.labels)
        return int(self.y.max()) + 1 if self.y is not None else 0

    def subset(self, idx: np.ndarray, suffix: str) -> Dataset:
        y = None if self.y is None else self.y[idx]
        named = {k: v[idx] for k, v in self.named.items()}
        boxes = None if self.boxes is None else [self.boxes[int(i)] for i in idx]
        groups = None if self.groups is None else self.groups[idx]
        texts = None if self.texts is None else [self.texts[int(i)] for i in idx]
        return Dataset(f"{self.name}:{suffix}", self.x[idx], y, self.labels, self.preprocessing, named, boxes, groups,
                       texts)

    def head(self, n: int) -> Dataset:
        """The first `n` samples (all of them when there are fewer)."""
        return self if len(self) <= n else self.subset(np.arange(n), f"first{n}")

    def reshaped(self, sample_shape: tuple[int, ...]) -> Dataset:
        """The same data viewed in a model's input shape; refuses when the element counts differ."""
        if self.sample_shape == tuple(sample_shape) or self.named:
            return self
        if int(np.prod(self.sample_shape)) != int(np.prod(sample_shape)):
            hint = ""
            if ("resize" in self.preprocessing and len(sample_shape) == 3 and sample_shape[1] == sample_shape[2]
                    and self.sample_shape[0] == sample_shape[0]):  # only the size differs, not the channels
                hint = f": give the images at the model's size (DATA:{sample_shape[2]}), or no size at all"
            raise DataError(
                f"data samples have shape {self.sample_shape} but the model expects {tuple(sample_shape)}{hint}"
            )
        x = self.x.reshape((len(self.x), *sample_shape))
        return Dataset(self.name, x, self.y, self.labels, self.preprocessing, boxes=self.boxes, texts=self.texts)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def split(ds: Dataset, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> Splits:
    """Seeded split; stratified by label when labels exist so small sets keep every class in each part.
    A dataset that names held-out groups (`preprocessing["test_groups"]`, e.g. speakers) tests on those
    groups alone and splits the rest into train and validation."""
    held = ds.preprocessing.get("test_groups")
    if held and ds.groups is not None:
        is_test = np.isin(ds.groups, held)
        if not is_test.any() or is_test.all():
            raise DataError(f"dataset {ds.name!r}: the held-out groups {held} must hold some samples, not all")
        rng = np.random.default_rng(seed)
        rest = np.flatnonzero(~is_test)
        labels = ds.y[rest] if ds.y is not None else np.zeros(len(rest), np.int64)
        train: list[int] = []
        for c in np.unique(labels):
            g = rng.permutation(rest[labels == c])
            train += g[: int(round(len(g) * fractions[0] / (fractions[0] + fractions[1])))].tolist()
        is_train = np.isin(np.arange(len(ds)), train)
        return Splits(ds.subset(np.flatnonzero(is_train), "train"),
                      ds.subset(np.flatnonzero(~is_train & ~is_test), "val"), ds.subset(np.flatnonzero(is_test), "test"))
    if len(ds) < 3:
        raise DataError(f"dataset {ds.name!r} has {len(ds)} samples; at least 3 are needed to split")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    groups = [np.arange(len(ds))] if ds.y is None else [np.flatnonzero(ds.y == c) for c in np.unique(ds.y)]
    for g in groups:
        g = rng.permutation(g)
        n_train = int(round(len(g) * fractions[0]))
        n_val = int(round(len(g) * fractions[1]))
        parts[0] += g[:n_train].tolist()
        parts[1] += g[n_train : n_train + n_val].tolist()
        parts[2] += g[n_train + n_val :].tolist()
    idx = [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    if any(len(i) == 0 for i in idx):
        raise DataError(f"dataset {ds.name!r} is too small to split into train/validation/test")
    return Splits(ds.subset(idx[0], "train"), ds.subset(idx[1], "val"), ds.subset(idx[2], "test"))
