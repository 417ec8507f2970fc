"""Datasets: bundled offline sets and user files, split the same way every time."""

from edgewise.data.dataset import Dataset, Splits, split
from edgewise.data.loaders import BUNDLED, load, load_splits

__all__ = ["BUNDLED", "Dataset", "Splits", "load", "load_splits", "split"]
