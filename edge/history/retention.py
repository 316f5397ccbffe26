"""Retention of the Parquet history: by age, then by disk budget, oldest first.

Age of a partition = ``now - newest``, where ``newest = max(end of the partition's
UTC date, newest file mtime)``; it is deleted when the age exceeds ``max_age_s``.
Taking the later of the two keeps data written late into an old date (replays,
a clock that was behind) for the full retention period.

Clock jumps: ``now`` should come from :class:`AgentClock` (wall time at start-up
advanced by the monotonic clock, so a wall-clock step while running does not move
it), and partitions the store wrote within ``max_age_s`` by the monotonic clock are
passed as ``protect`` (:meth:`ParquetStore.recent_partitions`): age deletion never
touches them, whatever the wall clock says. The disk budget ignores clocks: when
the history is over budget, whole partitions go oldest date first (then asset
name) until it fits, protected or not — a full disk is worse than a shorter history.

The write-ahead log (``_wal``) is not a partition and is never deleted here (its
rows are not yet in Parquet); its bytes count against the budget, so partitions
make room for it.

Call :func:`enforce` where no compaction can write into a partition meanwhile:
as one of the store's :attr:`~edge.history.parquet.ParquetStore.jobs` (the agent
does, through :class:`RetentionJob`; they run on its compactor thread) or inside
:meth:`~edge.history.parquet.ParquetStore.exclusive`.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.history import wal as wal_mod
from edge.history.layout import DAY, dir_asset
from edge.ingest.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from edge.history.parquet import ParquetStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partition:
    path: Path
    date: str  # YYYY-MM-DD (UTC)
    asset: str
    bytes: int
    newest_mtime: float

    @property
    def day_end(self) -> float:
        return calendar.timegm(time.strptime(self.date, "%Y-%m-%d")) + DAY


class AgentClock:
    """Wall time anchored at start-up and advanced by ``time.monotonic()``."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)


def list_partitions(root: Path) -> list[Partition]:
    out = []
    for ddir in sorted(Path(root).glob("date=*")):
        date = ddir.name.removeprefix("date=")
        try:
            time.strptime(date, "%Y-%m-%d")
        except ValueError:
            log.warning("%s: not a date partition, ignored by retention", ddir)
            continue
        for adir in sorted(ddir.glob("asset=*")):
            size, newest = 0, 0.0
            for f in adir.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                size += st.st_size
                newest = max(newest, st.st_mtime)
            out.append(Partition(adir, date, dir_asset(adir.name), size, newest))
    return out


def plan_deletions(partitions: Iterable[Partition], now: float, max_age_s: float,
                   budget_bytes: float, protect: Iterable[Path] = ()) -> list[Partition]:
    """Partitions to delete, in deletion order (pure; see the module docstring).

    >>> p = lambda d, b, m=0.0: Partition(Path(d), d, "a", b, m)
    >>> now = p("2024-01-10", 0).day_end
    >>> parts = [p("2024-01-01", 10), p("2024-01-08", 10), p("2024-01-09", 10)]
    >>> [x.date for x in plan_deletions(parts, now, 5 * 86400, 100)]
    ['2024-01-01']
    >>> [x.date for x in plan_deletions(parts, now, 30 * 86400, 15)]
    ['2024-01-01', '2024-01-08']
    >>> late = [p("2024-01-01", 10, m=now - 60)]  # old date, written a minute ago
    >>> plan_deletions(late, now, 5 * 86400, 100)
    []
    """
    guard = {Path(x) for x in protect}
    parts = sorted(partitions, key=lambda x: (x.date, x.asset))
    doomed = [x for x in parts
              if x.path not in guard and now - max(x.day_end, x.newest_mtime) > max_age_s]
    gone = {x.path for x in doomed}
    total = sum(x.bytes for x in parts if x.path not in gone)
    for x in parts:
        if total <= budget_bytes:
            break
        if x.path in gone:
            continue
        doomed.append(x)
        gone.add(x.path)
        total -= x.bytes
    return doomed


def apply_deletions(plan: Iterable[Partition]) -> tuple[int, int]:
    """Delete the planned partitions (and emptied date dirs); returns (count, bytes)."""
    n = freed = 0
    for x in plan:
        try:
            shutil.rmtree(x.path)
        except FileNotFoundError:
            continue
        n += 1
        freed += x.bytes
        log.info("retention: deleted %s (%d bytes)", x.path, x.bytes)
        with contextlib.suppress(OSError):
            x.path.parent.rmdir()  # only succeeds once the date holds no asset
    return n, freed


def wal_bytes(root: Path) -> int:
    n = 0
    for p in wal_mod.segments(root):
        with contextlib.suppress(FileNotFoundError):
            n += p.stat().st_size
    return n


def enforce(root: Path, now: float, max_age_s: float, budget_bytes: float,
            protect: Iterable[Path] = ()) -> tuple[int, int]:
    plan = plan_deletions(list_partitions(root), now, max_age_s,
                          budget_bytes - wal_bytes(root), protect)
    return apply_deletions(plan)


class RetentionJob:
    """The agent's retention: a job of the store's compactor thread, at most once a minute.

    Run under the store's compaction lock, so no partition is deleted while a
    compaction writes it; afterwards the history's bytes are reported to
    ``on_bytes`` (the storage gauge). A failure is logged once a minute and retried
    at the next run: retention must never stop the compactor.
    """

    def __init__(self, store: ParquetStore, clock: Callable[[], float], max_age_s: float,
                 budget_bytes: float, on_bytes: Callable[[float], None] = lambda b: None,
                 every_s: float = 60.0) -> None:
        self.store, self.clock = store, clock
        self.max_age_s, self.budget_bytes = max_age_s, budget_bytes
        self.on_bytes, self.every_s = on_bytes, every_s
        self._last = -1e18
        self._log = RateLimitedLog(log, 60.0)

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self.run()

    def run(self) -> None:
        """Enforce age and budget now, whenever the last run was."""
        store = self.store
        try:
            with store.exclusive():
                n, freed = enforce(store.root, self.clock(), self.max_age_s,
                                   self.budget_bytes, store.recent_partitions(2 * DAY))
        except OSError as exc:
            self._log.warning("retention", "retention failed: %s", exc)
            return
        if n:
            log.info("retention removed %d partitions (%.1f MB)", n, freed / 1e6)
        self.on_bytes(float(sum(p.bytes for p in list_partitions(store.root))
                            + wal_bytes(store.root)))
