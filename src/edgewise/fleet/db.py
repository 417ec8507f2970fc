"""One small SQL layer over SQLite (default) and PostgreSQL (by URL): same statements, `?` placeholders.

Only portable SQL is used (TEXT, BIGINT, DOUBLE PRECISION; ids made in Python), so the fleet store runs
unchanged on both. Every call is one transaction, serialized by a lock: the fleet server's writes are
small and few per request.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgewise.errors import FleetError

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (name TEXT, version TEXT, sha256 TEXT, size BIGINT, path TEXT,
    uploaded_by TEXT, uploaded_at DOUBLE PRECISION, signature TEXT, signed_by TEXT, manifest TEXT,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS enroll_tokens (token_hash TEXT PRIMARY KEY, tags TEXT, created DOUBLE PRECISION,
    expires DOUBLE PRECISION, used_by TEXT);
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, name TEXT, secret_hash TEXT, tags TEXT,
    enrolled DOUBLE PRECISION, last_seen DOUBLE PRECISION, model TEXT, version TEXT, state TEXT);
CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, model TEXT, version TEXT, selector TEXT,
    waves TEXT, gate TEXT, auto_rollback BIGINT, state TEXT, wave BIGINT, wave_started DOUBLE PRECISION,
    created DOUBLE PRECISION, created_by TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS assignments (device_id TEXT, serial BIGINT, rollout_id TEXT, model TEXT,
    version TEXT, rollback BIGINT, status TEXT, detail TEXT, updated DOUBLE PRECISION, prev_version TEXT,
    PRIMARY KEY (device_id, serial));
CREATE TABLE IF NOT EXISTS reports (device_id TEXT, ts DOUBLE PRECISION, rollout_id TEXT, version TEXT,
    step TEXT, ok BIGINT, detail TEXT, error_rate DOUBLE PRECISION, latency_ms DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS reports_device ON reports (device_id, ts);
CREATE INDEX IF NOT EXISTS assignments_rollout ON assignments (rollout_id, status);
CREATE INDEX IF NOT EXISTS reports_rollout ON reports (rollout_id, step);
"""
# Columns added after a store may already exist: (table, column, type), each added when missing.
MIGRATIONS = (("assignments", "prev_model", "TEXT"),)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._depth = 0
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError as e:
                raise FleetError("PostgreSQL needs psycopg: pip install 'edgewise[fleet]'") from e
            try:
                self._conn: Any = psycopg.connect(url, autocommit=False)
            except psycopg.Error as e:
                raise FleetError(f"cannot connect to {url.split('@')[-1]}: {e}") from e
            self.kind = "postgresql"
        else:
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self.kind = "sqlite"
        with self.tx() as t:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    t.execute(stmt)
        for table, column, kind in MIGRATIONS:
            with self.tx() as t:
                have = {r[0] for r in t.query(
                    "SELECT name FROM pragma_table_info(?)" if self.kind == "sqlite" else
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))}
                if column not in have:
                    t.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back on any error. A `tx` opened inside
        another (same thread) joins it."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield Tx(self)
                finally:
                    self._depth -= 1
                return
            if self.kind == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield Tx(self)
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit() if self.kind == "postgresql" else self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.tx() as t:
            return t.query(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.tx() as t:
            return t.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Tx:
    def __init__(self, db: Database) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self.db._conn.execute(self.db._sql(sql), tuple(params))
        return cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.db._conn.execute(self.db._sql(sql), tuple(params)).fetchall()]
