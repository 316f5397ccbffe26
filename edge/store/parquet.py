"""Atomic, partitioned Parquet history of accepted readings, behind a write-ahead log.

``append*`` buffers columns in memory; ``flush()`` appends every buffered row as
one Arrow IPC segment to the write-ahead log (``<root>/_wal``, see
:mod:`edge.store.wal`) and returns only once it is durable, so the caller may then
acknowledge the QoS 1 messages that carried the rows. One segment per flush, not
one file per (date, asset): with 1,000 assets a file and an fsync per partition
every second cost more CPU than the agent's whole hot path.

Compaction rewrites the log into the partitioned layout
``date=YYYY-MM-DD/asset=<asset>/part-<seq>-<uuid>.parquet`` (temp file + fsync +
rename + directory fsync) once it holds ``wal_max_rows`` rows or its oldest
segment is ``wal_max_age_s`` old, at :meth:`ParquetStore.close` and at start
(segments left by a crash). With ``background=True`` (the agent) it runs on the
store's own compactor thread (:meth:`ParquetStore.start`), never on the thread
that flushes: 500k rows into 1,000 partitions take seconds of disk waits that
would otherwise stall scoring and alerting. A compaction takes the segments
written so far; flushes meanwhile append new segments for the next one. A segment
is deleted only after its rows are durable in Parquet; a crash in between leaves
them twice, and reads deduplicate. A compaction that fails, or is still running
at :meth:`ParquetStore.close`, deletes the files it wrote and leaves its segments
in the log. Reads (:func:`read_history`: the trainer, ``forewarn export``)
include rows still in the log. Jobs in :attr:`ParquetStore.jobs` (the agent's
retention) run on the compactor thread under the compaction lock, and
:meth:`ParquetStore.exclusive` holds that lock for a caller elsewhere, so
retention never deletes a partition while a compaction writes into it.

Disk full: ``flush`` raises :class:`StorageError` and sets ``paused``; the rows
stay buffered and the next ``flush`` retries. The buffer is bounded by
``max_buffer_rows``: past it the **oldest** rows are dropped and counted in
``rows_dropped`` (history loses its oldest unsaved rows; scoring never waits on
storage). The agent exports ``paused``/``rows_dropped`` as metrics and an IT alert.
A failed compaction loses nothing (the log stays) and is retried later.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge.errors import StorageError
from edge.ingest.readings import Reading, Series
from edge.store import wal as wal_mod
from edge.store.layout import DAY, asset_dir, day_of, dir_asset  # noqa: F401 (re-exported)
from edge.store.wal import Wal, fsync_dir

log = logging.getLogger(__name__)

COMPACT_SWITCH_S = 0.0005  # GIL switch interval while the compactor thread compacts

SCHEMA = pa.schema([("asset", pa.string()), ("signal", pa.string()),
                    ("ts", pa.float64()), ("value", pa.float64())])


@dataclass
class _Chunk:
    asset: str | np.ndarray  # one asset for all rows, or an object array of str
    signal: np.ndarray  # object array of str
    ts: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.size)


class _Abandoned(Exception):
    """The store is closing: a background compaction rolls back instead of finishing."""


class ParquetStore:
    def __init__(self, root: Path, max_buffer_rows: int = 2_000_000,
                 compression: str = "zstd", wal_max_rows: int = 500_000,
                 wal_max_age_s: float = 300.0, background: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_buffer_rows = max_buffer_rows
        self.compression = compression
        self.wal_max_rows = wal_max_rows
        self.wal_max_age_s = wal_max_age_s
        self.background = background
        # Run on the compactor thread after each look at the log, under the same lock
        # as compaction (the agent's retention: it must not delete a partition that a
        # compaction is writing). Each job limits its own rate.
        self.jobs: list[Callable[[], None]] = []
        self.tick_s = 1.0  # how often the compactor checks the age trigger and runs jobs
        self.stop_timeout_s = 30.0
        self.compactions = 0
        self.compactions_abandoned = 0
        self.compaction_errors = 0
        self._retry_compaction_at = 0.0
        self.paused = False
        self.rows_written = 0
        self.rows_dropped = 0
        self.bytes_written = 0
        self.flush_errors = 0
        self._buf: deque[_Chunk] = deque()
        self._buffered = 0
        self._seq = time.time_ns()
        self._lock = threading.Lock()  # the buffer and _written
        self._append_io = threading.Lock()  # one write-ahead append at a time
        # One compaction (or job) at a time; reentrant so that a job on the compactor
        # thread may call exclusive() or compact().
        self._compacting = threading.RLock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        # monotonic time each partition was last written in this run (for retention)
        self._written: dict[Path, float] = {}
        self.removed_tmp = self._remove_stray_tmp()
        self.wal = Wal(self.root)
        self._left_over = self.wal.first_at is not None  # segments of the previous run
        if self._left_over and not background:
            log.warning("%s: compacting write-ahead log left by the previous run", self.root)
            self._compact_quietly()

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
        # Point readings of all assets go in one chunk: this runs once per decoded
        # batch on the hot path, and per-asset arrays cost more than the rows.
        points: list[Reading] = []
        for it in items:
            if isinstance(it, Series):
                ts = it.t0 + it.dt * np.arange(it.values.size)
                self.append(it.asset, it.signal, ts, it.values)
            else:
                points.append(it)
        if points:
            n = len(points)
            asset = np.empty(n, dtype=object)
            asset[:] = [r.asset for r in points]
            signal = np.empty(n, dtype=object)
            signal[:] = [r.signal for r in points]
            self._push(_Chunk(asset, signal,
                              np.fromiter((r.ts for r in points), np.float64, n),
                              np.fromiter((r.value for r in points), np.float64, n)))

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
                asset = head.asset if isinstance(head.asset, str) else head.asset[over:]
                self._buf[0] = _Chunk(asset, head.signal[over:], head.ts[over:],
                                      head.value[over:])
                cut = over
            self._buffered -= cut
            self.rows_dropped += cut
            over -= cut

    # -- writing ---------------------------------------------------------------

    def flush(self) -> int:
        """Write every buffered row durably (one WAL segment); returns the row count.

        On an OSError (disk full, read-only, ...) the rows go back to the front of
        the buffer, ``paused`` is set and StorageError is raised. Compaction, when
        due, never makes ``flush`` fail: with ``background`` it only wakes the
        compactor thread, otherwise it runs here once the rows are durable.
        """
        with self._append_io:
            with self._lock:
                chunks = list(self._buf)
                self._buf.clear()
                self._buffered = 0
            n = sum(len(c) for c in chunks)
            if chunks:
                try:
                    self.wal.append(_table(chunks))
                except OSError as exc:
                    self.flush_errors += 1
                    self.paused = True
                    with self._lock:
                        self._buf.extendleft(reversed(chunks))
                        self._buffered += n
                        self._trim_locked()
                    raise StorageError(f"{self.root}: cannot write history ({exc}); "
                                       f"{self._buffered} rows held in memory") from exc
                self.rows_written += n
                self.paused = False
        if self.background:
            if self.wal.due(self.wal_max_rows, self.wal_max_age_s):
                self._wake.set()
        else:
            self._maybe_compact()
        return n

    def start(self) -> None:
        """Start the compactor thread of a ``background`` store (idempotent).

        It compacts a log left by the previous run at once, then whenever a flush
        finds the log due or its age trigger passes.
        """
        if not self.background or self._thread is not None or self._closing.is_set():
            return
        if self._left_over:
            log.warning("%s: compacting write-ahead log left by the previous run (in the "
                        "background)", self.root)
        self._thread = threading.Thread(target=self._compactor, name="forewarn-compactor",
                                        daemon=True)
        self._wake.set()
        self._thread.start()

    def close(self, compact: bool = True) -> None:
        """Flush, stop the compactor, then compact the whole log (idempotent; nothing lost).

        A background compaction still in flight is abandoned: the partition files it
        wrote are deleted again and its segments stay in the log. ``compact=False``
        (the agent's stop) leaves the log for the next start: the rows are durable
        and readable in it, and a stop does not wait for one Parquet file and fsync
        per (date, asset) (~10 s of disk waits with 500 assets on the reference VM).
        """
        try:
            self.flush()
        except StorageError as exc:
            log.warning("close: %s", exc)
        if not self._stop_compactor() or not compact:
            return
        with self._compacting:
            if self.wal.first_at is not None:
                self._compact_quietly()

    def _stop_compactor(self) -> bool:
        """False when the compactor did not stop in time (a stuck disk)."""
        t = self._thread
        self._closing.set()
        self._wake.set()
        if t is None:
            return True
        t.join(self.stop_timeout_s)
        if t.is_alive():
            log.warning("%s: compactor still busy after %.0f s at close; its segments stay "
                        "in the log for the next start", self.root, self.stop_timeout_s)
            return False
        self._thread = None
        return True

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No compaction runs inside this block (retention deletes partitions here)."""
        with self._compacting:
            yield

    def _compactor(self) -> None:
        while True:
            self._wake.wait(self.tick_s)
            self._wake.clear()
            if self._closing.is_set():
                return
            with self._compacting:
                # A busy pipeline thread holds the GIL for up to the switch interval
                # (5 ms) each time this thread returns from a syscall, and compaction
                # makes several per partition file: with the pipeline saturated, 1,000
                # files took 43-55 s (bench.hotpath_micro stall), 20 s with 0.5 ms,
                # the pipeline's throughput unchanged. Only while compacting.
                switch = sys.getswitchinterval()
                sys.setswitchinterval(min(switch, COMPACT_SWITCH_S))
                try:
                    self._maybe_compact(self._closing)
                finally:
                    sys.setswitchinterval(switch)
                for job in list(self.jobs):
                    if self._closing.is_set():
                        break
                    try:
                        job()
                    except Exception:  # a failing job must not stop compaction
                        log.exception("%s: compactor job %r failed", self.root, job)

    def _maybe_compact(self, cancel: threading.Event | None = None) -> None:
        if (self.wal.due(self.wal_max_rows, self.wal_max_age_s)
                and time.monotonic() >= self._retry_compaction_at):
            self._compact_quietly(cancel)

    def _compact_quietly(self, cancel: threading.Event | None = None) -> None:
        try:
            self.compact(cancel)
        except (OSError, StorageError) as exc:
            # The rows stay durable in the log (and readable); try again later.
            self.compaction_errors += 1
            self._retry_compaction_at = time.monotonic() + 30.0
            log.warning("%s: compaction failed, write-ahead log kept (%s)", self.root, exc)

    def compact(self, cancel: threading.Event | None = None) -> int:
        """Rewrite the WAL segments written so far into partition files, then delete them.

        Flushes go on meanwhile, into new segments left for the next compaction. A
        segment is deleted only once every partition file holding its rows is durable.
        On an error, or when ``cancel`` is set (checked between two partition files),
        the files this compaction wrote are deleted again and its segments stay in the
        log, so its rows are neither lost nor stored twice; an error is then raised,
        a cancel returns 0. Returns the rows rewritten.
        """
        with self._compacting:
            segs = self.wal.take()
            if not segs:
                return 0
            written: list[tuple[Path, bool]] = []
            try:
                rows = self._rewrite(segs, written, cancel)
            except _Abandoned:
                self._undo(written)
                self.wal.put_back(segs)
                self.compactions_abandoned += 1
                log.info("%s: compaction abandoned at close (%d files undone); the log "
                         "is compacted at the next start", self.root, len(written))
                return 0
            except BaseException:
                self._undo(written)
                self.wal.put_back(segs)
                raise
            self.wal.drop(segs)
            self.compactions += 1
            return rows

    def _rewrite(self, segs: list[Path], written: list[tuple[Path, bool]],
                 cancel: threading.Event | None) -> int:
        """Write the rows of ``segs`` as one file per (date, asset); returns the rows.

        The log stays in its compact form (codes and floats, 24 bytes a row) and one
        sort order over it picks each partition's rows; strings exist only for one
        partition at a time. Casting the whole log to strings and splitting it with
        Arrow ``take`` held ~3x that at once, and the allocators keep a peak: one
        compaction of 500k rows left the agent ~60 MB larger for good.
        """
        try:
            return self._write_partitions(segs, written, cancel)
        finally:
            _give_back_memory()  # the log's columns are freed by now

    def _write_partitions(self, segs: list[Path], written: list[tuple[Path, bool]],
                          cancel: threading.Event | None) -> int:
        log_ = _read_log(segs)
        order, cuts = log_.partition_order()
        for a, b in itertools.pairwise([0, *cuts.tolist(), order.size]):
            if cancel is not None and cancel.is_set():
                raise _Abandoned
            written.append(self._write(*log_.partition(order[a:b])))
        return int(order.size)

    def _undo(self, written: list[tuple[Path, bool]]) -> None:
        """Delete partition files of an unfinished compaction (their rows stay in the log).

        Best effort: a file left behind (or a crash meanwhile) only means rows stored
        twice, which reads deduplicate.
        """
        dirs: set[Path] = set()
        for f, created in reversed(written):
            try:
                f.unlink()
                dirs.add(f.parent)
                if created:  # rmdir fails, harmlessly, on a directory not empty
                    f.parent.rmdir()
                    dirs.add(f.parent.parent)
                    with contextlib.suppress(OSError):
                        f.parent.parent.rmdir()
            except OSError:
                continue
        for d in dirs:
            with contextlib.suppress(OSError):
                fsync_dir(d)

    def _write(self, day: str, asset: str, table: pa.Table) -> tuple[Path, bool]:
        """One durable partition file; returns it and whether its directory was new."""
        d = self.root / f"date={day}" / asset_dir(asset)
        created = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
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
        fsync_dir(d)
        if created:
            fsync_dir(d.parent)
            fsync_dir(self.root)
        self.bytes_written += (d / name).stat().st_size
        with self._lock:
            self._written[d] = time.monotonic()
        return d / name, created

    def recent_partitions(self, max_age_s: float) -> set[Path]:
        """Partitions this process wrote within ``max_age_s`` by the monotonic clock.

        Retention protects these from age-based deletion, so a wall-clock jump
        cannot make fresh data look old.
        """
        now = time.monotonic()
        with self._lock:
            written = list(self._written.items())
        return {p for p, t in written if now - t <= max_age_s}

    # -- reading ---------------------------------------------------------------

    def read(self, since: float, until: float, assets: Sequence[str] | None = None) -> pa.Table:
        return read_history(self.root, since, until, assets)


def _table(chunks: list[_Chunk]) -> pa.Table:
    """The buffered rows as one table; asset and signal dictionary-encoded.

    Built from raw buffers: ``pa.array``/``pa.table`` on numpy or list input import
    pandas on first use (pyarrow 25), 0.25 s of CPU and 48 MB of RSS the agent never
    needs. Readers cast the dictionary columns back to :data:`SCHEMA`.
    """
    assets: dict[str, int] = {}
    signals: dict[str, int] = {}
    a_codes, s_codes = [], []
    for c in chunks:
        if isinstance(c.asset, str):
            a_codes.append(np.full(len(c), assets.setdefault(c.asset, len(assets)), np.int32))
        else:
            a_codes.append(np.fromiter((assets.setdefault(x, len(assets)) for x in c.asset),
                                       np.int32, len(c)))
        s_codes.append(np.fromiter((signals.setdefault(x, len(signals)) for x in c.signal),
                                   np.int32, len(c)))
    return pa.Table.from_arrays([
        _dictionary(np.concatenate(a_codes), list(assets)),
        _dictionary(np.concatenate(s_codes), list(signals)),
        _floats(np.concatenate([c.ts for c in chunks])),
        _floats(np.concatenate([c.value for c in chunks]))], names=SCHEMA.names)


def _floats(v: np.ndarray) -> pa.Array:
    v = np.ascontiguousarray(v, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), v.size, [None, pa.py_buffer(v)])


def _dictionary(codes: np.ndarray, names: list[str]) -> pa.Array:
    words = _strings(names)
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    idx = pa.Array.from_buffers(pa.int32(), codes.size, [None, pa.py_buffer(codes)])
    return pa.DictionaryArray.from_arrays(idx, words)


@dataclass
class _Log:
    """Taken write-ahead segments as numpy columns; asset and signal as codes into names."""

    assets: list[str]
    signals: pa.Array  # string names, indexed by ``signal`` codes
    asset: np.ndarray  # int32 codes
    signal: np.ndarray  # int32 codes
    ts: np.ndarray
    value: np.ndarray

    def partition_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Row indices grouped by (asset, UTC date), each group in write order (a
        stable sort), and where each group after the first starts."""
        if not self.ts.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        key = np.floor(self.ts / DAY).astype(np.int64)
        key -= key.min()
        key += self.asset.astype(np.int64) * (int(key.max()) + 1)
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        del key
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        return order, cuts

    def partition(self, idx: np.ndarray) -> tuple[str, str, pa.Table]:
        """(date, asset, rows as :data:`SCHEMA`) of one group of ``partition_order``."""
        i = int(idx[0])
        asset = self.assets[int(self.asset[i])]
        raw = asset.encode()
        offsets = np.arange(idx.size + 1, dtype=np.int32) * len(raw)
        asset_col = pa.Array.from_buffers(pa.string(), idx.size,
                                          [None, pa.py_buffer(offsets),
                                           pa.py_buffer(raw * idx.size)])
        codes = np.ascontiguousarray(self.signal[idx], dtype=np.int32)
        signal_col = self.signals.take(
            pa.Array.from_buffers(pa.int32(), codes.size, [None, pa.py_buffer(codes)]))
        table = pa.Table.from_arrays([asset_col, signal_col, _floats(self.ts[idx]),
                                      _floats(self.value[idx])], schema=SCHEMA)
        return day_of(float(self.ts[i])), asset, table


def _read_log(segs: list[Path]) -> _Log:
    """The rows of ``segs`` (oldest first) as one :class:`_Log`.

    One segment is decompressed at a time and copied out as numpy, so pyarrow's pool
    holds one segment, not the log. Each segment has its own dictionaries; their
    codes are mapped to codes shared by the whole log.
    """
    assets: dict[str, int] = {}
    signals: dict[str, int] = {}
    cols: list[list[np.ndarray]] = [[], [], [], []]
    for p in segs:
        for j, piece in enumerate(_segment_columns(p, assets, signals)):
            cols[j].append(piece)
    # One column at a time, so the per-segment pieces and the joined column of only
    # one column coexist.
    joined = []
    for pieces, dtype in zip(cols, (np.int32, np.int32, np.float64, np.float64), strict=True):
        joined.append(_joined(pieces, dtype))
        pieces.clear()
    return _Log(list(assets), _strings(list(signals)), *joined)


def _segment_columns(path: Path, assets: dict[str, int],
                     signals: dict[str, int]) -> Iterator[np.ndarray]:
    """Asset codes, signal codes, ts and value of one segment, copied out of Arrow."""
    try:
        t = wal_mod.read_segment(path, None)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{path}: unreadable WAL segment ({exc})") from exc
    batches = t.to_batches()
    yield _joined([_codes(path, b, "asset", assets) for b in batches], np.int32)
    yield _joined([_codes(path, b, "signal", signals) for b in batches], np.int32)
    for name in ("ts", "value"):
        pieces = []
        for b in batches:
            col = _column(path, b, name)
            if col.type != pa.float64() or col.null_count:
                raise StorageError(f"{path}: WAL column {name!r} is {col.type} with "
                                   f"{col.null_count} nulls, expected float64 without")
            pieces.append(_numpy(col, np.float64))
        yield _joined(pieces, np.float64)  # a copy: the segment's buffers are freed


def _joined(pieces: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


def _column(path: Path, batch: pa.RecordBatch, name: str) -> pa.Array:
    col = batch.column(name) if name in batch.schema.names else None
    if col is None:
        raise StorageError(f"{path}: WAL segment has no column {name!r} "
                           f"(columns {batch.schema.names})")
    return col


def _codes(path: Path, batch: pa.RecordBatch, name: str, names: dict[str, int]) -> np.ndarray:
    """A string column of one segment as codes into ``names`` (extended as needed)."""
    col = _column(path, batch, name)
    if not pa.types.is_dictionary(col.type):
        if not pa.types.is_string(col.type):
            raise StorageError(f"{path}: WAL column {name!r} is {col.type}, expected "
                               f"string or dictionary of string")
        col = col.dictionary_encode()
    if col.null_count or col.dictionary.null_count:
        raise StorageError(f"{path}: WAL column {name!r} has {col.null_count} null values")
    remap = np.fromiter((names.setdefault(x, len(names)) for x in col.dictionary.to_pylist()),
                        np.int32, len(col.dictionary))
    return remap[_numpy(col.indices.cast(pa.int32()), np.int32)]


def _strings(values: list[str]) -> pa.Array:
    raw = [v.encode() for v in values]
    offsets = np.zeros(len(raw) + 1, np.int32)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(raw),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raw))])


def _give_back_memory() -> None:
    """Return a compaction's freed memory to the OS.

    pyarrow's pool (mimalloc) and glibc malloc (numpy's arrays, in the compactor
    thread's arena) otherwise keep the compaction's peak mapped for good.
    """
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 (glibc only; musl has none)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _numpy(arr: pa.Array, dtype: type) -> np.ndarray:
    """A null-free numeric array as numpy, read from its buffer (see _table on pandas)."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * width)


def read_history(root: Path, since: float, until: float,
                 assets: Sequence[str] | None = None, dedupe: bool = True) -> pa.Table:
    """Rows with ``since <= ts < until`` (epoch s), sorted by asset, signal, ts.

    Includes rows still in the write-ahead log. Delivery is at least once (a QoS 1
    message stored but not yet acknowledged when the agent or the broker died comes
    again), and a crash during compaction leaves rows in both the log and Parquet,
    so the same reading can sit in two files. Deduplication happens here, at read
    time, on (asset, signal, ts), keeping the first-read row (Parquet files oldest
    first, then the log): at write time it would need an index of every row on
    disk. ``dedupe=False`` shows the raw rows.

    A file that cannot be read raises StorageError naming it; nothing is skipped.
    The trainer reads the store with this function.
    """
    import pyarrow.compute as pc

    root = Path(root)
    for _ in range(5):
        # A segment that vanishes between listing and reading was compacted
        # meanwhile: its rows may be in files listed too late, so list again. A
        # Parquet file that vanishes was undone by an abandoned compaction (its rows
        # are back in the log) or deleted by retention.
        try:
            tables = _read_files(root, since, until, assets)
            break
        except FileNotFoundError:
            continue
    else:
        tables = _read_files(root, since, until, assets)
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


def _read_files(root: Path, since: float, until: float,
                assets: Sequence[str] | None) -> list[pa.Table]:
    import pyarrow.compute as pc

    segs = wal_mod.segments(root)  # listed first: compaction writes Parquet, then deletes
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
                except FileNotFoundError:
                    raise
                except (OSError, pa.ArrowException) as exc:
                    raise StorageError(f"{f}: unreadable Parquet file ({exc})") from exc
                mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
                tables.append(t.filter(mask))
    for f in segs:
        try:
            t = wal_mod.read_segment(f, SCHEMA)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"{f}: unreadable WAL segment ({exc})") from exc
        mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
        if assets is not None:
            mask = pc.and_(mask, pc.is_in(t["asset"], value_set=pa.array(list(assets),
                                                                          pa.string())))
        tables.append(t.filter(mask))
    return tables
