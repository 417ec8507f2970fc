"""The receiving end of store-and-forward: stores each event once, whatever the redelivery."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from edgewise.agent.forward.queue import Item
from edgewise.agent.forward.store import connect
from edgewise.errors import StorageError


class EventStore:
    """SQLite table keyed by idempotency key: a redelivered batch changes nothing (exactly-once effect)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS events (key TEXT PRIMARY KEY, topic TEXT, priority INTEGER, "
                         "created REAL, received REAL DEFAULT (unixepoch('subsec')), payload BLOB)")
        self.duplicates = 0

    def store(self, items: Sequence[Item]) -> int:
        """Returns how many were new; commits before returning, so an ack means stored."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO events (key, topic, priority, created, payload) "
                                     "VALUES (?, ?, ?, ?, ?)",
                                     [(i.key, i.topic, i.priority, i.created, i.payload) for i in items])
                new = self._db.total_changes - before
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                self._db.execute("ROLLBACK")
                raise StorageError(f"event store write failed: {e}") from e
            except BaseException:  # whatever it was, never leave the transaction open for the next batch
                self._db.execute("ROLLBACK")
                raise
            self.duplicates += len(items) - new
            return new

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM events ORDER BY rowid")]

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT payload FROM events ORDER BY rowid")]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
