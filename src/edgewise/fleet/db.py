"""One small SQL layer over SQLite (default) and PostgreSQL (by URL): same statements, `?` placeholders.

Only portable SQL is used (TEXT, BIGINT, DOUBLE PRECISION; ids made in Python), so the fleet store runs
unchanged on both. Every call is one transaction. On SQLite (one process) they are serialized by a lock;
on PostgreSQL each thread takes a connection from a small pool, so requests run side by side and several
server processes can share one database (`fleet serve --workers N`); rows that must change in one place
only (a rollout's wave) are locked with `SELECT ... FOR UPDATE` (`Tx.for_update`).
"""

from __future__ import annotations

import queue
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
CREATE TABLE IF NOT EXISTS device_models (device_id TEXT, model TEXT, version TEXT, state TEXT,
    updated DOUBLE PRECISION, PRIMARY KEY (device_id, model));
CREATE INDEX IF NOT EXISTS reports_device ON reports (device_id, ts);
CREATE INDEX IF NOT EXISTS assignments_rollout ON assignments (rollout_id, status);
CREATE INDEX IF NOT EXISTS reports_rollout ON reports (rollout_id, step);
"""
# Columns added after a store may already exist: (table, column, type), each added when missing.
MIGRATIONS = (("assignments", "prev_model", "TEXT"), ("reports", "model", "TEXT"))
# Rows copied when a table is new in a store that already has the old one: (new table, its source, copy).
DATA_MIGRATIONS = (("device_models", "devices",  # one model per device (devices.model) became several
                    "INSERT INTO device_models SELECT id, model, version, state, last_seen FROM devices "
                    "WHERE model IS NOT NULL AND version IS NOT NULL"),)


POOL_SIZE = 8  # PostgreSQL connections per server process, at most
POOL_WAIT_S = 30.0


class Database:
    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._local = threading.local()  # the transaction this thread is in, if any (nested ones join it)
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._made, self.pool_size = 0, pool_size
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg  # noqa: F401
            except ImportError as e:
                raise FleetError("PostgreSQL needs psycopg: pip install 'edgewise[fleet]'") from e
            self.kind = "postgresql"
            self._pool.put(self._connect())  # fail now, with the reason, rather than at the first request
            self._made = 1
        else:
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self.kind = "sqlite"
        with self.tx() as t:
            if self.kind == "postgresql":  # two processes starting at once must not both create the tables
                t.execute("SELECT pg_advisory_xact_lock(7474)")
            tables = {r[0] for r in t.query(
                "SELECT name FROM sqlite_master WHERE type='table'" if self.kind == "sqlite" else
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    t.execute(stmt)
            for table, column, kind in MIGRATIONS:
                have = {r[0] for r in t.query(
                    "SELECT name FROM pragma_table_info(?)" if self.kind == "sqlite" else
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))}
                if column not in have:
                    t.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for table, source, copy in DATA_MIGRATIONS:
                if table not in tables and source in tables:
                    t.execute(copy)

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=False)
        except psycopg.Error as e:
            raise FleetError(f"cannot connect to {self.url.split('@')[-1]}: {e}") from e

    def _take(self) -> Any:
        """A pooled connection; a new one while fewer than pool_size exist; else wait for one."""
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._made < self.pool_size
            self._made += grow
        if grow:
            try:
                return self._connect()
            except FleetError:
                with self._lock:
                    self._made -= 1
                raise
        try:
            return self._pool.get(timeout=POOL_WAIT_S)
        except queue.Empty as e:
            raise FleetError(f"all {self.pool_size} database connections stayed busy for {POOL_WAIT_S:g} s") from e

    def _give(self, conn: Any, broken: bool) -> None:
        if broken or conn.closed:
            with self._lock:
                self._made -= 1
            try:
                conn.close()
            except Exception:  # noqa: S110 - already broken
                pass
            return
        self._pool.put(conn)

    @property
    def connections(self) -> int:
        """Database connections this process holds (PostgreSQL's pool; 1 for SQLite)."""
        return self._made if self.kind == "postgresql" else 1

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back on any error. A `tx` opened inside
        another (same thread) joins it."""
        joined = getattr(self._local, "tx", None)
        if joined is not None:
            yield joined
            return
        if self.kind == "sqlite":
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                self._local.tx = Tx(self, self._conn)
                try:
                    yield self._local.tx
                except BaseException:
                    self._conn.rollback()
                    raise
                else:
                    self._conn.execute("COMMIT")
                finally:
                    self._local.tx = None
            return
        import psycopg

        conn, broken = self._take(), False
        self._local.tx = Tx(self, conn)
        try:
            yield self._local.tx
        except BaseException as e:
            broken = isinstance(e, psycopg.OperationalError)
            if not broken:
                conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            self._local.tx = None
            self._give(conn, broken)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.tx() as t:
            return t.query(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.tx() as t:
            return t.execute(sql, params)

    def close(self) -> None:
        if self.kind == "sqlite":
            with self._lock:
                self._conn.close()
            return
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return


class Tx:
    def __init__(self, db: Database, conn: Any) -> None:
        self.db, self.conn = db, conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self.conn.execute(self.db._sql(sql), tuple(params))
        return cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(self.db._sql(sql), tuple(params)).fetchall()]

    @property
    def for_update(self) -> str:
        """Appended to a SELECT whose rows this transaction will change and no other may meanwhile (another
        server process ticking the same rollout). SQLite's BEGIN IMMEDIATE already holds the write lock."""
        return " FOR UPDATE" if self.db.kind == "postgresql" else ""
