"""The durable store-and-forward queue: SQLite in WAL mode, one fsync per committed batch.

An item is acknowledged to its producer only after the transaction holding it has committed
(`synchronous=FULL`: the WAL is fsynced at every commit). Each item has an idempotency key, so a
receiver can de-duplicate redelivery and the effect is exactly once. The queue is bounded in bytes and
age; when it is full it either drops the oldest items or refuses new ones, and every drop, refusal
and expiry is counted, never silent.
"""

from __future__ import annotations

import queue as stdqueue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgewise.agent.forward.store import connect
from edgewise.errors import AgentError, QueueFull, StorageError

POLICIES = ("drop-oldest", "refuse")
COUNTERS = ("appended", "acked", "dropped_full", "refused_full", "expired", "expired_age")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    expires REAL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_order ON items (priority DESC, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Item:
    key: str
    topic: str
    payload: bytes
    priority: int = 0
    created: float = 0.0
    expires: float | None = None


@dataclass(frozen=True)
class NewItem:
    payload: bytes
    topic: str = "event"
    key: str | None = None
    priority: int = 0
    ttl_s: float | None = None


class DurableQueue:
    """Thread-safe; one connection guarded by a lock (SQLite serializes writers anyway)."""

    def __init__(self, path: Path, max_bytes: int = 256 * 2**20, max_age_s: float | None = 7 * 86400,
                 when_full: str = "drop-oldest", max_pages: int | None = None) -> None:
        if when_full not in POLICIES:
            raise AgentError(f"queue policy must be one of {POLICIES}, got {when_full!r}")
        self.path, self.max_bytes, self.max_age_s, self.when_full = Path(path), max_bytes, max_age_s, when_full
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path)
            if max_pages is not None:  # caps the file size: how tests reproduce a full disk
                self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            self._db.executescript(_SCHEMA)
            for name in COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
        except sqlite3.DatabaseError as e:
            raise StorageError(f"cannot open queue {self.path}: {e}") from e
        self._bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing -----------------------------------------------------------------------------
    def append(self, payload: bytes, topic: str = "event", key: str | None = None, priority: int = 0,
               ttl_s: float | None = None) -> str:
        return self.append_many([NewItem(payload, topic, key, priority, ttl_s)])[0]

    def append_many(self, items: Sequence[NewItem]) -> list[str]:
        """Commit all items in one transaction (one fsync); returns their keys once durable.

        A key already in the queue is kept once (the producer retried): appending is idempotent.
        """
        now = time.time()
        rows = []
        for it in items:
            key = it.key or uuid.uuid4().hex
            expires = now + it.ttl_s if it.ttl_s is not None else None
            rows.append((key, it.topic, it.priority, now, expires, len(it.payload), it.payload))
        incoming = sum(r[5] for r in rows)
        with self._lock:
            try:
                with self._tx(f"write ({len(rows)} item(s) not stored)"):
                    self._make_room(incoming, now)
                    before = self._db.total_changes
                    self._db.executemany("INSERT OR IGNORE INTO items (key, topic, priority, created, expires, size, "
                                         "payload) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    added = self._db.total_changes - before
                    self._bump("appended", added)
            except QueueFull:
                self._count_outside("refused_full", len(rows))
                raise
            if added == len(rows):
                self._bytes += incoming
            else:  # some keys were already queued
                self._bytes = self._count_bytes()
        return [r[0] for r in rows]

    @contextmanager
    def _tx(self, what: str) -> Iterator[None]:
        """One IMMEDIATE transaction, committed at the end of the block; on any error rolled back (never
        left open for the next caller), SQLite's own failures (a full disk among them) as StorageError."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self._rollback()
            full = "full" in str(e).lower()
            raise StorageError(f"{'disk full under ' + str(self.path) if full else 'queue'}: {what} failed: {e}") from e
        except BaseException:  # a bad item, a refusal, an interrupt
            self._rollback()
            raise

    def _make_room(self, incoming: int, now: float) -> None:
        if self.max_age_s is not None:
            n = self._db.execute("DELETE FROM items WHERE created < ?", (now - self.max_age_s,)).rowcount
            if n:
                self._bump("expired_age", n)
                self._bytes = self._count_bytes()
        if self._bytes + incoming <= self.max_bytes:
            return
        if self.when_full == "refuse" or incoming > self.max_bytes:
            raise QueueFull(f"queue is full ({self._bytes:,} of {self.max_bytes:,} bytes); policy: refuse")
        need = self._bytes + incoming - self.max_bytes
        freed = dropped = 0
        for seq, size in self._db.execute("SELECT seq, size FROM items ORDER BY seq"):
            if freed >= need:
                break
            freed += size
            dropped += 1
            last = seq
        self._db.execute("DELETE FROM items WHERE seq <= ?", (last,))
        self._bump("dropped_full", dropped)
        self._bytes -= freed

    # -- reading -----------------------------------------------------------------------------
    def peek(self, limit: int = 500) -> list[Item]:
        """Up to `limit` items, highest priority first, then oldest; expired items are removed and counted."""
        now = time.time()
        with self._lock:
            with self._tx("read"):
                n = self._db.execute("DELETE FROM items WHERE expires IS NOT NULL AND expires < ?", (now,)).rowcount
                if n:
                    self._bump("expired", n)
                rows = self._db.execute("SELECT key, topic, payload, priority, created, expires FROM items "
                                        "ORDER BY priority DESC, seq LIMIT ?", (limit,)).fetchall()
            if n:
                self._bytes = self._count_bytes()
        return [Item(*r) for r in rows]

    def ack(self, keys: Iterable[str]) -> int:
        """Delete delivered items (unknown keys are ignored: an ack may be repeated)."""
        keys = list(keys)
        with self._lock:
            with self._tx("ack"):
                before = self._db.total_changes
                self._db.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in keys])
                removed = self._db.total_changes - before
                self._bump("acked", removed)
            self._bytes = self._count_bytes()
        return removed

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def stats(self) -> dict[str, int]:
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            depth = self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return {**counters, "depth": depth, "bytes": self._bytes, "max_bytes": self.max_bytes}

    # -- helpers -----------------------------------------------------------------------------
    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _count_outside(self, name: str, n: int) -> None:
        try:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))
        except sqlite3.OperationalError:
            pass  # counting a refusal must not turn it into a different error

    def _count_bytes(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0]

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass


class GroupCommitter:
    """Many producers, one writer: items submitted within a few milliseconds share one transaction
    (one fsync), and each `submit` returns only after its items are durable."""

    def __init__(self, queue: DurableQueue, max_batch: int = 1024, max_wait_s: float = 0.0) -> None:
        self.queue, self.max_batch, self.max_wait_s = queue, max_batch, max_wait_s
        self._pending: stdqueue.Queue = stdqueue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgewise-group-commit", daemon=True)
        self._thread.start()
        self.on_commit: list = []  # callbacks (e.g. wake the syncer)

    def submit(self, items: Sequence[NewItem], timeout: float = 30.0) -> list[str]:
        done = threading.Event()
        box: dict[str, object] = {}
        self._pending.put((list(items), done, box))
        if not done.wait(timeout):
            raise StorageError("durable queue did not commit in time")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["keys"]  # type: ignore[return-value]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._pending.get(timeout=0.1)
            except stdqueue.Empty:
                continue
            # Take whatever queued up while the previous commit was fsyncing: batches grow with load by
            # themselves, and a lone request is committed at once (max_wait_s > 0 lingers on purpose).
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    wait = deadline - time.monotonic()
                    item = self._pending.get(timeout=wait) if wait > 0 else self._pending.get_nowait()
                except stdqueue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            try:
                keys = self.queue.append_many([it for items, _, _ in batch for it in items])
                pos = 0
                for items, done, box in batch:
                    box["keys"] = keys[pos : pos + len(items)]
                    pos += len(items)
            except AgentError as e:  # one failed commit fails every producer in it: none was acknowledged
                for _, _, box in batch:
                    box["error"] = e
            for _, done, _ in batch:
                done.set()
            for callback in self.on_commit:
                callback()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
