"""Durable alert state and history in SQLite (WAL; lifecycle commits fsync'd).

Every committed change survives a SIGKILL (it is in the WAL file before COMMIT
returns). Lifecycle changes (an ``alert_events`` row: opened, escalated, cleared,
the crew's actions) and maintenance changes also survive a power cut: the commit
that carries one fsyncs the WAL before returning, as ``synchronous=FULL`` would.
Evidence-only commits (the latest score, peak and history of open alerts, which
the alert manager writes at most every ``alerts.evidence_interval_s``) skip that
fsync (``synchronous=NORMAL``): measured at ~4 ms per commit on the reference VM,
it was the alert path's p99 latency, and after a power cut the alert is still
there with its evidence a few commits older. The
store is the authority on the ISA-18.2 lifecycle of an alert::

    open ──ack──> acknowledged ──resolve──> resolved  (by a person, or "auto-cleared")
      │  <──escalate to critical (needs a new ack)──┘
      ├──shelve(until, by)──> shelved ──expiry/unshelve──> open | acknowledged
      └──maintenance on──> suppressed ──maintenance off──> open | acknowledged

A partial unique index keeps at most one unresolved alert per (asset,
condition). ``kind`` says what raised it (``model``, ``limit``,
``sensor_fault``) and ``detail`` (JSON) what a limit or sensor-fault alert saw;
``model`` is the ``<name>/<version>`` that scored the window which opened it.
A person resolves an alert with a verdict (:mod:`edge.alerts.verdicts`): the
alert keeps the last one (``verdict``, ``verdict_note``, ``work_order``,
``verdict_by``, ``verdict_ts``) and every verdict is a ``verdict`` event
(``alert_events.verdict`` / ``work_order``). ``opened_data_ts`` is the data
time of the window that opened the alert (``data_ts`` moves on with the
evidence): with ``data_ts`` at resolve, the alert's span in the readings' own
time, which ``forewarn retrain`` reads. Stores written before these columns are
migrated at open (their alerts are ``model`` alerts, without a verdict or an
``opened_data_ts``). ``alert_events`` is append-only: one row per change, never updated.
Resolved alerts older than the retention period are purged with their events.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from edge.alerts.verdicts import VerdictRow, check
from edge.alerts.verdicts import rows as verdict_rows
from edge.core.errors import ForewarnError, StorageError

KINDS = ("model", "limit", "sensor_fault")
STATES = ("open", "acknowledged", "resolved", "shelved", "suppressed")
UNRESOLVED = ("open", "acknowledged", "shelved", "suppressed")
SEVERITIES = ("warning", "critical")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  asset TEXT NOT NULL, condition TEXT NOT NULL,
  severity TEXT NOT NULL CHECK (severity IN ('warning', 'critical')),
  state TEXT NOT NULL
    CHECK (state IN ('open', 'acknowledged', 'resolved', 'shelved', 'suppressed')),
  opened_ts REAL NOT NULL, updated_ts REAL NOT NULL, data_ts REAL,
  score REAL, peak_score REAL, model TEXT NOT NULL DEFAULT '',
  top_features TEXT NOT NULL DEFAULT '[]', history TEXT NOT NULL DEFAULT '[]',
  ack_by TEXT, ack_ts REAL, ack_note TEXT,
  resolved_by TEXT, resolved_ts REAL, resolved_note TEXT,
  shelved_by TEXT, shelved_until REAL, shelved_note TEXT,
  kind TEXT NOT NULL DEFAULT 'model', detail TEXT NOT NULL DEFAULT '{}',
  verdict TEXT CHECK (verdict IN ('confirmed', 'false_alarm', 'unsure')),
  verdict_note TEXT, work_order TEXT, verdict_by TEXT, verdict_ts REAL,
  opened_data_ts REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_unresolved
  ON alerts (asset, condition) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS alerts_by_opened ON alerts (opened_ts);
CREATE TABLE IF NOT EXISTS alert_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  alert_id INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
  state TEXT NOT NULL, severity TEXT NOT NULL,
  who TEXT, note TEXT, score REAL, verdict TEXT, work_order TEXT
);
CREATE INDEX IF NOT EXISTS alert_events_by_alert ON alert_events (alert_id);
CREATE TABLE IF NOT EXISTS maintenance (
  asset TEXT PRIMARY KEY, since_ts REAL NOT NULL, who TEXT NOT NULL, note TEXT
);
"""


# Columns later versions added, in order: (name, declaration) per table.
_ADDED = {
    "alerts": (("kind", "TEXT NOT NULL DEFAULT 'model'"), ("detail", "TEXT NOT NULL DEFAULT '{}'"),
               ("verdict", "TEXT CHECK (verdict IN ('confirmed', 'false_alarm', 'unsure'))"),
               ("verdict_note", "TEXT"), ("work_order", "TEXT"), ("verdict_by", "TEXT"),
               ("verdict_ts", "REAL"), ("opened_data_ts", "REAL")),
    "alert_events": (("verdict", "TEXT"), ("work_order", "TEXT")),
}


class AlertStateError(ForewarnError):
    """A lifecycle change that the alert's current state does not allow (HTTP 409)."""


class AlertNotFound(ForewarnError):
    pass


@dataclass(slots=True)
class Alert:
    id: int
    asset: str
    condition: str
    severity: str
    state: str
    opened_ts: float
    updated_ts: float
    data_ts: float | None
    score: float | None
    peak_score: float | None
    model: str
    top_features: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[float]] = field(default_factory=list)
    ack_by: str | None = None
    ack_ts: float | None = None
    ack_note: str | None = None
    resolved_by: str | None = None
    resolved_ts: float | None = None
    resolved_note: str | None = None
    shelved_by: str | None = None
    shelved_until: float | None = None
    shelved_note: str | None = None
    kind: str = "model"  # model | limit | sensor_fault (see edge.alerts.payload)
    detail: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None  # the last one: confirmed | false_alarm | unsure
    verdict_note: str | None = None
    work_order: str | None = None
    verdict_by: str | None = None
    verdict_ts: float | None = None
    # Data time of the window that opened it (``data_ts`` moves on with the evidence):
    # with ``data_ts`` at resolve, the alert's span in the readings' own time.
    opened_data_ts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def top_signals(self) -> list[str]:
        seen: list[str] = []
        for f in self.top_features:
            sig = f.get("signal")
            if sig and sig not in seen:
                seen.append(sig)
        return seen


class AlertStore:
    def __init__(self, path: Path, *, retention_days: float = 365.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._must_sync = False  # the open transaction holds a lifecycle change
        self._lazy = False  # a lazy outer transaction has not begun yet
        self._unsynced = False  # a lifecycle change committed without its fsync yet
        self._wal_fd: int | None = None
        self.last_sync_s = 0.0  # how long the latest WAL fsync took
        self._fd_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE) below.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            # Durability is chosen per commit: see the module docstring and _commit().
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open alert store ({exc})") from exc

    def _migrate(self) -> None:
        """Columns added since the first stores, added to an older one at open.

        Before alerts had a kind every alert was a model alert; before verdicts
        none had one (NULL: not judged).
        """
        for table, cols in _ADDED.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for col, decl in cols:
                if col not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    def _sync_wal(self) -> None:
        """fsync the WAL file: what ``synchronous=FULL`` does at every commit."""
        with self._fd_lock:
            fd = self._wal_fd
            if fd is not None and os.fstat(fd).st_nlink == 0:
                os.close(fd)  # the WAL was removed and recreated: sync the live one
                fd = self._wal_fd = None
            if fd is None:
                fd = self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            t0 = time.monotonic()
            os.fsync(fd)
            self.last_sync_s = time.monotonic() - t0

    def take_unsynced(self) -> bool:
        """Whether a ``transaction(sync=False)`` committed a lifecycle change; clears it."""
        with self._lock:
            out, self._unsynced = self._unsynced, False
            return out

    def sync(self) -> None:
        """Make every commit so far survive a power cut (one fsync of the WAL).

        Safe from another thread while the store is being written: the fsync
        covers at least every commit that returned before it was called.
        """
        try:
            self._sync_wal()
        except OSError as exc:
            raise StorageError(f"{self.path}-wal: cannot sync alert changes ({exc})") from exc

    @contextmanager
    def transaction(self, sync: bool = True, lazy: bool = False
                    ) -> Iterator[sqlite3.Connection]:
        """One commit for everything inside; nests (inner blocks join the outer).

        A commit holding a lifecycle change fsyncs the WAL before returning; with
        ``sync=False`` it does not, and :meth:`take_unsynced` tells the caller to
        call :meth:`sync` (from any thread) before it reports the change.
        ``lazy``: BEGIN only when an inner block (a method of this store) starts,
        so a batch that changes no alert costs no BEGIN/COMMIT (the alert manager
        opens one per pipeline batch, and a batch without an open alert or a
        change writes nothing). The caller must then write only through this
        store's methods.
        """
        with self._lock:
            outer = self._depth == 0
            try:
                if outer and not lazy:
                    self._db.execute("BEGIN IMMEDIATE")
                elif outer:
                    self._lazy = True
                elif self._lazy:
                    self._lazy = False
                    self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                if outer and self._lazy:
                    self._lazy = False  # nothing was written: nothing to commit
                elif outer:
                    self._db.execute("COMMIT")
                    if self._must_sync:
                        self._must_sync = False
                        if sync:
                            self.sync()
                        else:
                            self._unsynced = True
            except BaseException as exc:
                if outer:
                    self._must_sync = self._lazy = False
                if outer and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"{self.path}: {exc}") from exc
                raise

    # -- reads -----------------------------------------------------------------

    def get(self, alert_id: int) -> Alert | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _alert(row) if row else None

    def require(self, alert_id: int) -> Alert:
        alert = self.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"alert {alert_id} does not exist")
        return alert

    def unresolved(self, asset: str | None = None) -> list[Alert]:
        sql, args = "SELECT * FROM alerts WHERE state != 'resolved'", []
        if asset is not None:
            sql, args = sql + " AND asset = ?", [asset]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [_alert(r) for r in rows]

    def query(self, *, state: str | None = None, asset: str | None = None,
              severity: str | None = None, since: float | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[Alert], int]:
        """Alerts matching the filters, unresolved first then newest; and the total count."""
        where: list[str] = []
        args: list[Any] = []
        if state == "unresolved":
            where.append("state != 'resolved'")
            state = None
        for col, val in (("state", state), ("asset", asset), ("severity", severity)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("updated_ts >= ?")
            args.append(since)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM alerts{clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM alerts{clause} ORDER BY (state = 'resolved'), "
                "CASE severity WHEN 'critical' THEN 0 ELSE 1 END, opened_ts DESC, id DESC "
                "LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [_alert(r) for r in rows], int(total)

    def events(self, alert_id: int | None = None, after_id: int = 0,
               limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM alert_events WHERE id > ?", [after_id]
        if alert_id is not None:
            sql, args = sql + " AND alert_id = ?", [*args, alert_id]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]).fetchall()
        return [dict(r) for r in rows]

    def verdict_rows(self) -> list[VerdictRow]:
        """Resolved alerts by kind, model, asset and last verdict (live precision)."""
        with self._lock:
            return verdict_rows(self._db)

    def maintenance(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM maintenance").fetchall()
        return {r["asset"]: dict(r) for r in rows}

    # -- changes ---------------------------------------------------------------

    def open_alert(self, *, asset: str, condition: str, severity: str, score: float | None,
                   data_ts: float | None, model: str = "", state: str = "open",
                   top_features: list[dict[str, Any]] | None = None,
                   history: list[list[float]] | None = None, kind: str = "model",
                   detail: dict[str, Any] | None = None) -> Alert:
        if kind not in KINDS:
            raise ValueError(f"alert kind {kind!r} is not one of {KINDS}")
        now = self._clock()
        top_json = _json(top_features or [])
        detail_json = _json(detail or {})
        with self.transaction() as db:
            try:
                cur = db.execute(
                    "INSERT INTO alerts (asset, condition, severity, state, opened_ts, "
                    "updated_ts, data_ts, score, peak_score, model, top_features, history, "
                    "kind, detail, opened_data_ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (asset, condition, severity, state, now, now, data_ts, score, score, model,
                     top_json, _history_json(history or []), kind, detail_json, data_ts))
            except sqlite3.IntegrityError as exc:
                # The partial unique index is the check (a SELECT before it was one more
                # statement on the alert path, in the batch whose event waits).
                if "UNIQUE" not in str(exc):
                    raise
                raise AlertStateError(f"asset {asset!r} already has an unresolved "
                                      f"{condition!r} alert") from exc
            alert_id = int(cur.lastrowid or 0)
            self._event(alert_id, now, "opened", state, severity, None, None, score)
        # Exactly the row just inserted; re-reading it cost a SELECT and two JSON parses.
        return Alert(id=alert_id, asset=asset, condition=condition, severity=severity,
                     state=state, opened_ts=now, updated_ts=now, data_ts=data_ts,
                     score=score, peak_score=score, model=model,
                     top_features=orjson.loads(top_json),
                     history=list(history or []), kind=kind, detail=orjson.loads(detail_json),
                     opened_data_ts=data_ts)

    def update_evidence(self, alert_id: int, *, score: float | None,
                        peak_score: float | None,
                        data_ts: float, history: list[list[float]],
                        top_features: list[dict[str, Any]] | None = None,
                        detail: dict[str, Any] | None = None) -> None:
        """Latest score and explanation of an unresolved alert (not a lifecycle event)."""
        with self.transaction() as db:
            db.execute("UPDATE alerts SET score = ?, peak_score = ?, data_ts = ?, history = ?, "
                       "top_features = COALESCE(?, top_features), "
                       "detail = COALESCE(?, detail) WHERE id = ?",
                       (score, peak_score, data_ts, _history_json(history),
                        None if top_features is None else _json(top_features),
                        None if detail is None else _json(detail), alert_id))

    def change(self, alert_id: int, kind: str, *, who: str | None = None,
               note: str | None = None, score: float | None = None,
               allowed_from: tuple[str, ...] = STATES, record: bool = True,
               at: float | None = None, current: Alert | None = None,
               history: list[list[float]] | None = None,
               top_features: list[dict[str, Any]] | None = None,
               **fields: Any) -> Alert:
        """Apply one lifecycle change and append its event (unless not ``record``), atomically.

        ``fields`` are alert columns to set (``state``, ``severity``, ``ack_by``…);
        ``history`` and ``top_features``, when given, the evidence written with the
        change (in its one UPDATE, where a separate :meth:`update_evidence` was one
        more statement before an auto-clear's commit).
        Raises AlertNotFound, or AlertStateError when the current state is not in
        ``allowed_from``. ``at``: the change's time when the caller took it already.
        ``current``: the row as the caller holds it (the alert manager keeps every
        unresolved alert as this store returned it); saves re-reading it, a SELECT
        and three JSON parses per auto-clear. A row that is gone still raises.
        """
        now = self._clock() if at is None else at
        bad = set(fields) - _COLUMNS
        if bad:
            raise ValueError(f"unknown alert columns {sorted(bad)}")
        with self.transaction() as db:
            if current is None or current.id != alert_id:
                current = self.require(alert_id)
            if current.state not in allowed_from:
                raise AlertStateError(f"alert {alert_id} is {current.state}; cannot {kind} it "
                                      f"(allowed from {', '.join(allowed_from)})")
            fields["updated_ts"] = now
            if score is not None:
                # The alert shows the score of the window that changed it (with its
                # data_ts), as the event row does; not the previous window's.
                fields.setdefault("score", score)
            cols = dict(fields)
            if history is not None:
                cols["history"] = _history_json(history)
                fields["history"] = list(history)
            if top_features is not None:
                cols["top_features"] = _json(top_features)
                fields["top_features"] = orjson.loads(cols["top_features"])
            sets = ", ".join(f"{k} = ?" for k in cols)
            cur = db.execute(f"UPDATE alerts SET {sets} WHERE id = ?",
                             [*cols.values(), alert_id])
            if cur.rowcount == 0:
                raise AlertNotFound(f"alert {alert_id} does not exist")
            after = dataclasses.replace(current, **fields)  # the row as the UPDATE left it
            if record:
                self._event(alert_id, now, kind, after.state, after.severity, who, note,
                            current.score if score is None else score)
        return after

    def record_verdict(self, alert_id: int, verdict: str, who: str, note: str | None = None,
                       work_order: str | None = None, *, resolve: bool) -> Alert:
        """A person's verdict, atomically with its event; ``resolve`` also resolves the alert.

        With ``resolve`` the alert must be unresolved (events ``resolved`` then
        ``verdict``); without, it must be resolved already and the verdict replaces
        the last one (an amendment, or a verdict on an auto-cleared alert).
        """
        check(verdict, note, work_order)
        now = self._clock()
        sets: dict[str, Any] = {"verdict": verdict, "verdict_note": note,
                                "work_order": work_order, "verdict_by": who,
                                "verdict_ts": now}
        with self.transaction():
            if resolve:
                after = self.change(alert_id, "resolved", who=who, note=note, at=now,
                                    allowed_from=UNRESOLVED, state="resolved",
                                    resolved_by=who, resolved_ts=now, resolved_note=note,
                                    **sets)
            else:
                current = self.require(alert_id)
                if current.state != "resolved":
                    raise AlertStateError(f"alert {alert_id} is {current.state}; resolve it "
                                          "with a verdict (POST .../resolve)")
                after = self.change(alert_id, "judge", allowed_from=("resolved",),
                                    record=False, at=now, **sets)
            self._event(alert_id, now, "verdict", after.state, after.severity, who, note,
                        after.score, verdict, work_order)
        return after

    def set_maintenance(self, asset: str, on: bool, who: str, note: str | None = None) -> bool:
        """Record an asset's maintenance window; returns whether anything changed."""
        with self.transaction() as db:
            if on:
                cur = db.execute("INSERT OR IGNORE INTO maintenance VALUES (?, ?, ?, ?)",
                                 (asset, self._clock(), who, note))
            else:
                cur = db.execute("DELETE FROM maintenance WHERE asset = ?", (asset,))
            self._must_sync = True
            return cur.rowcount > 0

    def purge(self, now: float | None = None) -> int:
        """Delete resolved alerts (and their events) older than the retention period."""
        cutoff = (self._clock() if now is None else now) - self.retention_days * 86_400
        with self.transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM alerts WHERE state = 'resolved' AND resolved_ts < ?", (cutoff,))]
            db.executemany("DELETE FROM alert_events WHERE alert_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    def _event(self, alert_id: int, ts: float, kind: str, state: str, severity: str,
               who: str | None, note: str | None, score: float | None,
               verdict: str | None = None, work_order: str | None = None) -> None:
        self._must_sync = True  # a lifecycle change: its commit fsyncs the WAL
        self._db.execute("INSERT INTO alert_events (alert_id, ts, kind, state, severity, who, "
                         "note, score, verdict, work_order) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (alert_id, ts, kind, state, severity, who, note, score, verdict,
                          work_order))


# Columns a lifecycle change may set (JSON columns go through update_evidence).
_COLUMNS = {f.name for f in fields(Alert)} - {"id", "top_features", "history", "detail"}


def _json(d: dict[str, Any] | list[dict[str, Any]]) -> str:
    # Non-finite floats (a sensor fault's value may be one) are not JSON: null. orjson:
    # json.dumps and the loads of the copy were ~20 µs of an opening's path to its event.
    return orjson.dumps(d).decode()


def _history_json(history: list[list[float]]) -> str:
    """The score history as JSON text; orjson: json.dumps of it per batch was a hot spot.

    The history holds finite floats only (the manager skips NaN scores), which
    both encoders write alike.
    """
    return orjson.dumps(history).decode()


def _alert(row: sqlite3.Row) -> Alert:
    d = dict(row)
    d["top_features"] = json.loads(d["top_features"] or "[]")
    d["history"] = orjson.loads(d["history"] or "[]")
    d["detail"] = orjson.loads(d.get("detail") or "{}")
    return Alert(**d)
