"""Atomic, partitioned Parquet history of accepted readings.

``append*`` buffers columns in memory; ``flush()`` writes one file per (UTC date,
asset) partition via temp file + fsync + rename + directory fsync, and returns
only once the rows are durable, so the caller may then acknowledge the QoS 1
messages that carried them. A crash leaves at most a ``*.tmp`` file, removed at
the next start; a renamed file is always complete.

Disk full: ``flush`` raises :class:`StorageError` and sets ``paused``; the rows
stay buffered and the next ``flush`` retries. The buffer is bounded by
``max_buffer_rows``: past it the **oldest** rows are dropped and counted in
``rows_dropped`` (history loses its oldest unsaved rows; scoring never waits on
storage). The agent exports ``paused``/``rows_dropped`` as metrics and an IT alert.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge.errors import StorageError
from edge.ingest.readings import Reading, Series

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("asset", pa.string()), ("signal", pa.string()),
                    ("ts", pa.float64()), ("value", pa.float64())])
DAY = 86_400
_SAFE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def asset_dir(asset: str) -> str:
    """Directory name of an asset; anything outside a safe alphabet is %-encoded."""
    return "asset=" + (asset if _SAFE.match(asset) else quote(asset, safe=""))


def dir_asset(name: str) -> str:
    return unquote(name.removeprefix("asset="))


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


@dataclass
class _Chunk:
    asset: str
    signal: np.ndarray  # object array of str
    ts: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.size)


class ParquetStore:
    def __init__(self, root: Path, max_buffer_rows: int = 2_000_000,
                 compression: str = "zstd") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_buffer_rows = max_buffer_rows
        self.compression = compression
        self.paused = False
        self.rows_written = 0
        self.rows_dropped = 0
        self.bytes_written = 0
        self.flush_errors = 0
        self._buf: deque[_Chunk] = deque()
        self._buffered = 0
        self._seq = time.time_ns()
        self._lock = threading.Lock()
        # monotonic time each partition was last written in this run (for retention)
        self._written: dict[Path, float] = {}
        self.removed_tmp = self._remove_stray_tmp()

    def _remove_stray_tmp(self) -> int:
        n = 0
        for p in self.root.rglob("*.tmp"):
            try:
                p.unlink()
                n += 1
            except OSError as exc:
                log.warning("%s: cannot remove stray temp file (%s)", p, exc)
        if n:
            log.warning("%s: removed %d incomplete temp file(s) from a crash", self.root, n)
        return n

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    # -- buffering -------------------------------------------------------------

    def append(self, asset: str, signal: str | Sequence[str] | np.ndarray,
               ts: float | Sequence[float] | np.ndarray,
               value: float | Sequence[float] | np.ndarray) -> None:
        """Buffer rows of one asset; ``signal`` may be one name for all rows."""
        t = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if isinstance(signal, str):
            s = np.full(t.size, signal, dtype=object)
        else:
            s = np.asarray(signal, dtype=object)
        if not (t.size == v.size == s.size):
            raise ValueError(f"append({asset!r}): ts/signal/value lengths {t.size}/{s.size}/"
                             f"{v.size} differ")
        if t.size:
            self._push(_Chunk(asset, s, t, v))

    def append_readings(self, items: Iterable[Reading | Series]) -> None:
        """Buffer decoder output: point readings and evenly spaced series."""
        points: dict[str, list[Reading]] = {}
        for it in items:
            if isinstance(it, Series):
                ts = it.t0 + it.dt * np.arange(it.values.size)
                self.append(it.asset, it.signal, ts, it.values)
            else:
                points.setdefault(it.asset, []).append(it)
        for asset, rs in points.items():
            self.append(asset, [r.signal for r in rs], [r.ts for r in rs],
                        [r.value for r in rs])

    def _push(self, chunk: _Chunk) -> None:
        with self._lock:
            self._buf.append(chunk)
            self._buffered += len(chunk)
            self._trim_locked()

    def _trim_locked(self) -> None:
        over = self._buffered - self.max_buffer_rows
        while over > 0 and self._buf:
            head = self._buf[0]
            if len(head) <= over:
                self._buf.popleft()
                cut = len(head)
            else:
                self._buf[0] = _Chunk(head.asset, head.signal[over:], head.ts[over:],
                                      head.value[over:])
                cut = over
            self._buffered -= cut
            self.rows_dropped += cut
            over -= cut

    # -- writing ---------------------------------------------------------------

    def flush(self) -> int:
        """Write every buffered row durably; returns the number of rows written.

        On an OSError (disk full, read-only, ...) the rows not yet durable go back
        to the front of the buffer, ``paused`` is set and StorageError is raised.
        """
        with self._lock:
            chunks = list(self._buf)
            self._buf.clear()
            self._buffered = 0
        if not chunks:
            return 0
        parts = _partition(chunks)
        written = 0
        try:
            for (day, asset), group in parts.items():
                self._write(day, asset, group)
                written += sum(len(c) for c in group)
                group.clear()
        except OSError as exc:
            self.flush_errors += 1
            self.paused = True
            rest = [c for g in parts.values() for c in g]
            with self._lock:
                self._buf.extendleft(reversed(rest))
                self._buffered += sum(len(c) for c in rest)
                self._trim_locked()
            self.rows_written += written
            raise StorageError(f"{self.root}: cannot write history ({exc}); "
                               f"{self._buffered} rows held in memory") from exc
        self.rows_written += written
        self.paused = False
        return written

    def _write(self, day: str, asset: str, chunks: list[_Chunk]) -> None:
        d = self.root / f"date={day}" / asset_dir(asset)
        created = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "asset": pa.array([asset] * sum(len(c) for c in chunks), pa.string()),
            "signal": pa.array(np.concatenate([c.signal for c in chunks]), pa.string()),
            "ts": np.concatenate([c.ts for c in chunks]),
            "value": np.concatenate([c.value for c in chunks]),
        }, schema=SCHEMA)
        self._seq += 1
        name = f"part-{self._seq:020d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = d / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression=self.compression)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, d / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(d)
        if created:
            _fsync_dir(d.parent)
            _fsync_dir(self.root)
        self.bytes_written += (d / name).stat().st_size
        self._written[d] = time.monotonic()

    def recent_partitions(self, max_age_s: float) -> set[Path]:
        """Partitions this process wrote within ``max_age_s`` by the monotonic clock.

        Retention protects these from age-based deletion, so a wall-clock jump
        cannot make fresh data look old.
        """
        now = time.monotonic()
        return {p for p, t in self._written.items() if now - t <= max_age_s}

    # -- reading ---------------------------------------------------------------

    def read(self, since: float, until: float, assets: Sequence[str] | None = None) -> pa.Table:
        return read_history(self.root, since, until, assets)


def _partition(chunks: list[_Chunk]) -> dict[tuple[str, str], list[_Chunk]]:
    parts: dict[tuple[str, str], list[_Chunk]] = {}
    for c in chunks:
        days = np.floor(c.ts / DAY)
        if days.size and days[0] == days[-1] and (days == days[0]).all():
            parts.setdefault((day_of(days[0] * DAY), c.asset), []).append(c)
            continue
        for dnum in np.unique(days):
            m = days == dnum
            parts.setdefault((day_of(dnum * DAY), c.asset), []).append(
                _Chunk(c.asset, c.signal[m], c.ts[m], c.value[m]))
    return parts


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(root: Path, since: float, until: float,
                 assets: Sequence[str] | None = None, dedupe: bool = True) -> pa.Table:
    """Rows with ``since <= ts < until`` (epoch s), sorted by asset, signal, ts.

    Delivery is at least once (a QoS 1 message stored but not yet acknowledged
    when the agent or the broker died comes again), so the same reading can sit
    in two files. Deduplication happens here, at read time, on (asset, signal,
    ts), keeping the first-written row: at write time it would need an index of
    every row already on disk. ``dedupe=False`` shows the raw rows.

    A file that cannot be read raises StorageError naming it; nothing is skipped.
    The trainer reads the store with this function.
    """
    import pyarrow.compute as pc

    root = Path(root)
    first, last = day_of(since), day_of(max(since, until - 1e-6))
    want = None if assets is None else {asset_dir(a) for a in assets}
    tables = []
    for ddir in sorted(root.glob("date=*")):
        day = ddir.name.removeprefix("date=")
        if not (first <= day <= last):
            continue
        for adir in sorted(ddir.glob("asset=*")):
            if want is not None and adir.name not in want:
                continue
            for f in sorted(adir.glob("part-*.parquet")):
                try:
                    t = pq.read_table(f, schema=SCHEMA)
                except (OSError, pa.ArrowException) as exc:
                    raise StorageError(f"{f}: unreadable Parquet file ({exc})") from exc
                mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
                tables.append(t.filter(mask))
    if not tables:
        return SCHEMA.empty_table()
    out = pa.concat_tables(tables)
    # A stable sort: files are read oldest first, so the first of equal keys was written first.
    out = out.sort_by([("asset", "ascending"), ("signal", "ascending"), ("ts", "ascending")])
    if dedupe and out.num_rows > 1:
        same = [pc.equal(out[c][1:], out[c][:-1]) for c in ("asset", "signal", "ts")]
        dup = pc.and_(pc.and_(same[0], same[1]), same[2])
        out = out.filter(pa.concat_arrays([pa.array([True]),
                                           pc.invert(dup.combine_chunks())]))
    return out
