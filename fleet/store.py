"""Durable report storage behind one small interface, SQLite or PostgreSQL.

The same SQL runs on both (``?`` placeholders are rewritten to ``%s`` for
psycopg). Idempotency is the (site_id, seq) primary key: ``put`` inserts with
``ON CONFLICT DO NOTHING`` and commits before it returns, so the collector can
acknowledge the MQTT message right after. A second report with a stored
(site_id, seq) is a *duplicate* when its bytes are the same (a redelivery, or
a harmless replay of a genuine report) and a *conflict* when they differ
(refused as a replay: the appliance never signs two reports with one number).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from edge.core.errors import StorageError

PutResult = Literal["stored", "duplicate", "conflict"]

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS reports ("
    " site_id TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,"
    " received DOUBLE PRECISION NOT NULL, hour BIGINT NOT NULL,"
    " model TEXT NOT NULL, grp INTEGER NOT NULL, digest TEXT NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (site_id, seq))",
    "CREATE INDEX IF NOT EXISTS reports_by_kind ON reports (kind, site_id, model, seq)",
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    " received DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, site_id TEXT,"
    " detail TEXT NOT NULL, size BIGINT NOT NULL, head TEXT NOT NULL)",
]
SCHEMA_LOCK_ID = 0x666C656574  # "fleet": the advisory lock around schema creation
DEAD_HEAD_BYTES = 2048  # the first bytes of a refused payload are kept for inspection


@dataclass(frozen=True)
class Report:
    site_id: str
    seq: int
    kind: str
    received: float
    hour: int
    model: str  # drift: the bundle's model sha256; health: ""
    group: int
    body: str  # canonical JSON of the report body

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.kind}\n{self.body}".encode()).hexdigest()


class ReportStore(Protocol):
    def put(self, r: Report) -> PutResult: ...
    def dead_letter(self, received: float, reason: str, site_id: str | None, detail: str,
                    payload: bytes) -> None: ...
    def reports(self, site_id: str | None = None, kind: str | None = None,
                limit: int = 1000) -> list[Report]: ...
    def latest_health(self) -> list[Report]: ...
    def recent_drift(self, per_model: int = 3) -> list[Report]: ...
    def site_stats(self) -> list[tuple[str, int, int, int, float]]: ...
    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SqlStore:
    """The shared implementation; ``paramstyle`` is ``qmark`` or ``format``."""

    def __init__(self, conn: Any, label: str, paramstyle: str = "qmark",
                 schema_lock: str | None = None) -> None:
        self._db = conn
        self.label = label
        self._format = paramstyle == "format"
        self._lock = threading.Lock()
        with self._tx() as cur:
            if schema_lock:
                cur.execute(schema_lock)
            for stmt in SCHEMA:
                cur.execute(stmt)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._format else sql

    class _Tx:
        def __init__(self, store: SqlStore) -> None:
            self.s = store

        def __enter__(self) -> Any:
            self.s._lock.acquire()
            self.cur = self.s._db.cursor()
            return self

        def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
            self.cur.execute(self.s._sql(sql), tuple(args))
            return self.cur

        def __exit__(self, et: Any, exc: Any, tb: Any) -> None:
            try:
                if et is None:
                    self.s._db.commit()
                else:
                    self.s._db.rollback()
            finally:
                self.cur.close()
                self.s._lock.release()

    def _tx(self) -> SqlStore._Tx:
        return SqlStore._Tx(self)

    def _run(self, fn: Any) -> Any:
        try:
            with self._tx() as tx:
                return fn(tx)
        except StorageError:
            raise
        except Exception as exc:  # sqlite3.Error / psycopg.Error: translated here
            if type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg") or \
                    isinstance(exc, sqlite3.Error):
                raise StorageError(f"{self.label}: {exc}") from exc
            raise

    def put(self, r: Report) -> PutResult:
        def fn(tx: SqlStore._Tx) -> PutResult:
            cur = tx.execute(
                "INSERT INTO reports (site_id, seq, kind, received, hour, model, grp, digest, "
                "body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site_id, seq) DO NOTHING",
                (r.site_id, r.seq, r.kind, r.received, r.hour, r.model, r.group, r.digest,
                 r.body))
            if cur.rowcount == 1:
                return "stored"
            row = tx.execute("SELECT digest FROM reports WHERE site_id = ? AND seq = ?",
                             (r.site_id, r.seq)).fetchone()
            return "duplicate" if row and row[0] == r.digest else "conflict"
        result: PutResult = self._run(fn)
        return result

    def dead_letter(self, received: float, reason: str, site_id: str | None, detail: str,
                    payload: bytes) -> None:
        head = payload[:DEAD_HEAD_BYTES].decode("utf-8", "replace").replace("\x00", "\\0")
        self._run(lambda tx: tx.execute(
            "INSERT INTO dead_letters (received, reason, site_id, detail, size, head) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (received, reason, site_id, detail[:1000], len(payload), head)))

    @staticmethod
    def _report(row: Sequence[Any]) -> Report:
        return Report(str(row[0]), int(row[1]), str(row[2]), float(row[3]), int(row[4]),
                      str(row[5]), int(row[6]), str(row[7]))

    _COLS = "site_id, seq, kind, received, hour, model, grp, body"

    def reports(self, site_id: str | None = None, kind: str | None = None,
                limit: int = 1000) -> list[Report]:
        """Newest first."""
        where, args = [], []
        for col, val in (("site_id", site_id), ("kind", kind)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._run(lambda tx: tx.execute(
            f"SELECT {self._COLS} FROM reports{clause} ORDER BY site_id, seq DESC LIMIT ?",
            (*args, limit)).fetchall())
        return [self._report(r) for r in rows]

    def latest_health(self) -> list[Report]:
        rows = self._run(lambda tx: tx.execute(
            f"SELECT {self._COLS} FROM reports r WHERE kind = 'health' AND seq = "
            "(SELECT MAX(seq) FROM reports x WHERE x.site_id = r.site_id AND x.kind = 'health')"
        ).fetchall())
        return [self._report(r) for r in rows]

    def recent_drift(self, per_model: int = 3) -> list[Report]:
        """The last ``per_model`` drift reports of every (site, model), newest first."""
        rows = self._run(lambda tx: tx.execute(
            f"SELECT {self._COLS} FROM (SELECT {self._COLS}, ROW_NUMBER() OVER "
            "(PARTITION BY site_id, model ORDER BY seq DESC) AS n FROM reports "
            "WHERE kind = 'drift') t WHERE n <= ? ORDER BY site_id, model, seq DESC",
            (per_model,)).fetchall())
        return [self._report(r) for r in rows]

    def site_stats(self) -> list[tuple[str, int, int, int, float]]:
        """(site_id, reports, min seq, max seq, last received) per site."""
        rows = self._run(lambda tx: tx.execute(
            "SELECT site_id, COUNT(*), MIN(seq), MAX(seq), MAX(received) FROM reports "
            "GROUP BY site_id ORDER BY site_id").fetchall())
        return [(str(a), int(b), int(c), int(d), float(e)) for a, b, c, d, e in rows]

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._run(lambda tx: tx.execute(
            "SELECT received, reason, site_id, detail, size, head FROM dead_letters "
            "ORDER BY received DESC LIMIT ?", (limit,)).fetchall())
        keys = ("received", "reason", "site_id", "detail", "size", "head")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_sqlite(path: Path) -> SqlStore:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        # A report is acknowledged to the broker right after its commit: FULL makes
        # that commit survive a power cut, not only a crash of the service.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"{path}: cannot open the fleet store ({exc})") from exc
    return SqlStore(db, str(path))


def open_postgres(dsn: str) -> SqlStore:
    try:
        import psycopg
    except ImportError as exc:
        raise StorageError("store.postgres_dsn is set but psycopg is not installed "
                           "(pip install 'forewarn[fleet]')") from exc
    try:
        conn = psycopg.connect(dsn, autocommit=False, connect_timeout=10)
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL {_safe(dsn)}: cannot connect ({exc})") from exc
    # Collectors started together on a new database would race on CREATE ... IF NOT
    # EXISTS (a unique violation in PostgreSQL's catalogue): one creates, the rest wait.
    try:
        return SqlStore(conn, f"PostgreSQL {_safe(dsn)}", paramstyle="format",
                        schema_lock=f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})")
    except psycopg.Error as exc:
        conn.close()
        raise StorageError(f"PostgreSQL {_safe(dsn)}: cannot create the schema ({exc})") \
            from exc


def _safe(dsn: str) -> str:
    """The DSN without a password, for messages."""
    import re

    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@",
                                                      dsn))
