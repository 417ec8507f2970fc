"""Every byte that leaves the device, on record: what fields, how many bytes, to where.

A send is recorded before it leaves (if the record cannot be written, nothing is sent) and marked
`delivered` or `failed` after; a batch sent again after a failure is marked as a retry, so counting the
`delivered` rows that are not retries counts what reached the tier above exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.agent.forward.queue import Item
from edgewise.agent.forward.store import connect
from edgewise.agent.forward.upstream import Upstream, encode_batch, encode_npy
from edgewise.errors import StorageError


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS audit (ts REAL, kind TEXT, destination TEXT, fields TEXT, "
                         "items INTEGER, bytes INTEGER)")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
        for col, decl in (("status", "TEXT DEFAULT 'sent'"), ("retry", "INTEGER DEFAULT 0")):
            if col not in cols:  # logs written before sends were marked delivered/failed
                self._db.execute(f"ALTER TABLE audit ADD COLUMN {col} {decl}")

    def record(self, kind: str, destination: str, fields: Sequence[str], items: int, nbytes: int,
               retry: bool = False) -> int:
        """Write the row for a send about to happen; returns its id. Raises StorageError if it cannot."""
        try:
            with self._lock:
                cur = self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                                       (time.time(), kind, destination, json.dumps(sorted(set(fields))), items,
                                        nbytes, int(retry)))
                return int(cur.lastrowid or 0)
        except sqlite3.Error as e:
            raise StorageError(f"audit log write failed, so nothing was sent: {e}") from e

    def mark(self, row: int, status: str) -> None:
        try:
            with self._lock:
                self._db.execute("UPDATE audit SET status = ? WHERE rowid = ?", (status, row))
        except sqlite3.Error as e:  # the send happened; its row still says "sending", which errs on the safe side
            raise StorageError(f"audit log update failed: {e}") from e

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT ts, kind, destination, fields, items, bytes, status, retry FROM audit "
                                   "ORDER BY rowid")
            return [{"ts": r[0], "kind": r[1], "destination": r[2], "fields": json.loads(r[3]), "items": r[4],
                     "bytes": r[5], "status": r[6], "retry": bool(r[7])} for r in cur]


def _fields(items: Sequence[Item]) -> list[str]:
    out: set[str] = set()
    for i in items:
        try:
            out |= set(json.loads(i.payload))
        except (ValueError, TypeError):
            out.add("<binary>")
    return sorted(out)


class AuditingUpstream(Upstream):
    """Wraps the real upstream; records each send before it happens and its outcome after."""

    MAX_TRACKED = 10_000

    def __init__(self, inner: Upstream, audit: AuditLog, destination: str) -> None:
        self.inner, self.audit, self.destination = inner, audit, destination
        self._failed: set[str] = set()  # first key of each batch whose send failed (a resend is a retry)

    def deliver(self, items: Sequence[Item]) -> None:
        first = items[0].key if items else ""
        row = self.audit.record("events", self.destination, _fields(items), len(items), len(encode_batch(items)),
                                retry=first in self._failed)
        try:
            self.inner.deliver(items)
        except BaseException:
            if len(self._failed) < self.MAX_TRACKED:
                self._failed.add(first)
            self.audit.mark(row, "failed")
            raise
        self._failed.discard(first)
        self.audit.mark(row, "delivered")

    def predict(self, model: str, x: np.ndarray, what: str = "inputs") -> dict[str, Any]:
        row = self.audit.record("escalation", self.destination, ["model", what], len(x), len(encode_npy(x)))
        try:
            answer = self.inner.predict(model, x, what)
        except BaseException:
            self.audit.mark(row, "failed")
            raise
        self.audit.mark(row, "delivered")
        return answer

    def predict_image(self, model: str, jpeg: bytes) -> dict[str, Any]:
        row = self.audit.record("escalation", self.destination, ["model", "crop_jpeg"], 1, len(jpeg))
        try:
            answer = self.inner.predict_image(model, jpeg)
        except BaseException:
            self.audit.mark(row, "failed")
            raise
        self.audit.mark(row, "delivered")
        return answer
