"""Durable, bounded outbox of egress payloads (SQLite, WAL).

Rows leave in insertion order. ``peek_batch`` leases rows to the uplink;
``mark_sent`` deletes them once the cloud acknowledged them; ``release`` hands
them back after a failure. Rows survive a crash (a leased row that was not
marked sent is simply offered again: delivery is at least once, and each report
carries ``interval_first``/``interval_last`` so the cloud can drop a duplicate).

Overflow (depth would exceed ``max_rows``): the two oldest rows not currently
leased are merged into one with ``merge(older, newer)`` (for drift reports:
window-weighted means of the scalars, OR of the alarms, see
:func:`edge.egress.schema.merge_reports`), keeping the older row's place in
the order (rows leased to the uplink are never merged, so the bound may be
exceeded by at most the rows in flight).
Nothing is dropped silently: if the two cannot be merged (e.g. a
different model), the oldest is dropped and counted in ``dropped``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import EgressError, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    created: float
    payload: bytes


class Outbox:
    def __init__(self, path: Path, max_rows: int = 10_000,
                 merge: Callable[[bytes, bytes], bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows={max_rows} must be >= 2 (overflow merges two rows)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._merge = merge
        self._clock = clock
        self._lock = threading.Lock()
        self._leased: set[int] = set()
        self.merged = 0  # overflow merges performed
        self.dropped = 0  # rows dropped because they could not be merged
        self._rate = 0.0  # EWMA of rows sent per second
        self._last_sent: float | None = None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY "
                             "AUTOINCREMENT, created REAL NOT NULL, payload BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open outbox ({exc})") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, payload: bytes) -> int:
        """Append a payload durably; merges the oldest rows first if the outbox is full."""
        with self._lock:
            try:
                while self._depth() >= self.max_rows:
                    if not self._shrink():
                        break
                cur = self._db.execute("INSERT INTO outbox (created, payload) VALUES (?, ?)",
                                       (self._clock(), payload))
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot store egress payload ({exc})") from exc
            return int(cur.lastrowid or 0)

    def _shrink(self) -> bool:
        rows = self._db.execute(
            "SELECT id, payload FROM outbox ORDER BY id LIMIT ?", (len(self._leased) + 2,)
        ).fetchall()
        free = [r for r in rows if r[0] not in self._leased][:2]
        if len(free) < 2:
            return False
        (id_a, a), (id_b, b) = free
        try:
            if self._merge is None:
                raise EgressError("no merge function configured")
            merged = self._merge(bytes(a), bytes(b))
        except EgressError as exc:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (id_a,))
            self.dropped += 1
            log.error("outbox full and rows %d/%d cannot be merged (%s): dropped row %d",
                      id_a, id_b, exc, id_a)
            return True
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (merged, id_a))
        self._db.execute("DELETE FROM outbox WHERE id = ?", (id_b,))
        self._db.execute("COMMIT")
        self.merged += 1
        log.warning("outbox full (%d rows): merged rows %d and %d", self.max_rows, id_a, id_b)
        return True

    def peek_batch(self, n: int) -> list[OutboxRow]:
        """The oldest ``n`` rows not already leased, leased to the caller in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created, payload FROM outbox ORDER BY id LIMIT ?",
                (n + len(self._leased),)).fetchall()
            out = [OutboxRow(r[0], r[1], bytes(r[2])) for r in rows
                   if r[0] not in self._leased][:n]
            self._leased.update(r.id for r in out)
            return out

    def release(self, ids: list[int]) -> None:
        with self._lock:
            self._leased.difference_update(ids)

    def mark_sent(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            # One transaction: in autocommit mode executemany would fsync per row.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._leased.difference_update(ids)
            now = time.monotonic()
            if self._last_sent is not None:
                inst = len(ids) / max(now - self._last_sent, 1e-3)
                self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
            self._last_sent = now

    def _depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def depth(self) -> int:
        with self._lock:
            return self._depth()

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return 0.0 if row[0] is None else max(0.0, self._clock() - float(row[0]))

    @property
    def drain_rate(self) -> float:
        """Recent rows sent per second (EWMA); 0 until two sends were seen."""
        return self._rate

    def drain_eta_s(self) -> float | None:
        """Estimated seconds to empty the outbox at the recent rate; None if unknown."""
        d = self.depth()
        if d == 0:
            return 0.0
        return d / self._rate if self._rate > 0 else None
