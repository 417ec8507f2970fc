"""Labelled samples an agent keeps on the device, for training there (federated learning).

The data never leaves the device: a federated client (`edgewise federate join`) reads it from this store and
sends only weights and metrics. The store is one SQLite file in the agent's data dir, bounded in bytes:
when full, the oldest samples of the model holding the most go first (so a flood for one model takes at most an
equal share from the others). Each sample is kept as the model's input (float32, without the
batch dimension) and a class index.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from edgewise.agent.forward.store import connect
from edgewise.errors import DataError, StorageError

FILENAME = "samples.db"


class SampleStore:
    def __init__(self, path: Path, max_bytes: int = 64 * 2**20) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, "
                         "label INTEGER, shape TEXT, x BLOB, added REAL DEFAULT (unixepoch('subsec')))")
        self._db.execute("CREATE INDEX IF NOT EXISTS samples_model ON samples (model, id)")

    @classmethod
    def open_existing(cls, path: Path) -> SampleStore:
        """For readers (a federated client): a missing store is an error, not an empty new file."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise DataError(f"no sample store at {path}: start the agent with that --data-dir and POST labelled "
                            "samples to /v1/samples, or fill it with `edgewise federate seed`")
        return cls(path)

    def add(self, model: str, x: np.ndarray, y: np.ndarray) -> int:
        """Store a batch (x batch-first, y class indices). Returns how many samples the model now has."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y)
        if not model:
            raise DataError("samples need the name of the model they train")
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise DataError(f"need a batch of inputs and one label each, got inputs {list(x.shape)} and "
                            f"labels {list(y.shape)}")
        if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
            raise DataError("labels must be class indices (integers)")
        if (y < 0).any():
            raise DataError("labels must be class indices >= 0")
        if not np.isfinite(x).all():
            raise DataError("inputs hold NaN or infinite values")
        shape = json.dumps(list(x.shape[1:]))
        with self._lock:
            known = self._db.execute("SELECT shape FROM samples WHERE model = ? LIMIT 1", (model,)).fetchone()
            if known is not None and known[0] != shape:
                raise DataError(f"samples for {model} have shape {known[0]}, got {shape}")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO samples (model, label, shape, x) VALUES (?, ?, ?, ?)",
                                     [(model, int(label), shape, row.tobytes()) for row, label in zip(x, y)])
                self._evict(model)
                self._db.execute("COMMIT")
            except (sqlite3.Error, OverflowError, ValueError) as e:
                self._db.execute("ROLLBACK")
                raise StorageError(f"sample store write failed: {e}") from e
            return self._db.execute("SELECT COUNT(*) FROM samples WHERE model = ?", (model,)).fetchone()[0]

    def _evict(self, model: str) -> None:
        """Over the bound, drop the oldest samples of whichever model holds the most bytes, until it fits: a
        flood of samples for one model can take no more than an equal share from the others, then it evicts
        its own."""
        total = self._db.execute("SELECT COALESCE(SUM(LENGTH(x)), 0) FROM samples").fetchone()[0]
        while total > self.max_bytes:
            largest = self._db.execute("SELECT model FROM samples GROUP BY model ORDER BY SUM(LENGTH(x)) DESC, "
                                       "model = ? DESC LIMIT 1", (model,)).fetchone()[0]
            oldest = self._db.execute("SELECT id, LENGTH(x) FROM samples WHERE model = ? ORDER BY id LIMIT 1",
                                      (largest,)).fetchone()
            self._db.execute("DELETE FROM samples WHERE id = ?", (oldest[0],))
            total -= oldest[1]

    def load(self, model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All samples for `model` (or for the only model the store holds), oldest first."""
        with self._lock:
            models = self.counts()
            if model is None:
                if len(models) != 1:
                    raise DataError(f"the store at {self.path} holds samples for {sorted(models) or 'no model'}; "
                                    "name one")
                model = next(iter(models))
            rows = self._db.execute("SELECT label, shape, x FROM samples WHERE model = ? ORDER BY id",
                                    (model,)).fetchall()
        if not rows:
            raise DataError(f"the store at {self.path} holds no samples for {model}")
        shape = tuple(json.loads(rows[0][1]))
        x = np.stack([np.frombuffer(r[2], dtype=np.float32).reshape(shape) for r in rows])
        return x, np.array([r[0] for r in rows], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT model, COUNT(*) FROM samples GROUP BY model").fetchall())

    def close(self) -> None:
        self._db.close()
