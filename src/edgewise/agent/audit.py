"""Every byte that leaves the device, on record: what fields, how many bytes, to where."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.agent.queue import Item
from edgewise.agent.store import connect
from edgewise.agent.upstream import Upstream, encode_batch, encode_npy


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS audit (ts REAL, kind TEXT, destination TEXT, fields TEXT, "
                         "items INTEGER, bytes INTEGER)")

    def record(self, kind: str, destination: str, fields: Sequence[str], items: int, nbytes: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
                             (time.time(), kind, destination, json.dumps(sorted(set(fields))), items, nbytes))

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT ts, kind, destination, fields, items, bytes FROM audit ORDER BY rowid")
            return [{"ts": r[0], "kind": r[1], "destination": r[2], "fields": json.loads(r[3]), "items": r[4],
                     "bytes": r[5]} for r in cur]


def _fields(items: Sequence[Item]) -> list[str]:
    out: set[str] = set()
    for i in items:
        try:
            out |= set(json.loads(i.payload))
        except (ValueError, TypeError):
            out.add("<binary>")
    return sorted(out)


class AuditingUpstream(Upstream):
    """Wraps the real upstream; records each send before it happens (a failed send is still an attempt)."""

    def __init__(self, inner: Upstream, audit: AuditLog, destination: str) -> None:
        self.inner, self.audit, self.destination = inner, audit, destination

    def deliver(self, items: Sequence[Item]) -> None:
        self.audit.record("events", self.destination, _fields(items), len(items), len(encode_batch(items)))
        self.inner.deliver(items)

    def predict(self, model: str, x: np.ndarray, what: str = "inputs") -> dict[str, Any]:
        self.audit.record("escalation", self.destination, ["model", what], len(x), len(encode_npy(x)))
        return self.inner.predict(model, x, what)
