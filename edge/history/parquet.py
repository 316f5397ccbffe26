"""Atomic, partitioned Parquet history of accepted readings, behind a write-ahead log.

``append*`` buffers columns in memory; ``flush()`` appends every buffered row as
one segment to the write-ahead log (``<root>/_wal``, see
:mod:`edge.history.wal`) and returns only once it is durable, so the caller may then
acknowledge the QoS 1 messages that carried the rows. One segment per flush, not
one file per (date, asset): with 1,000 assets a file and an fsync per partition
every second cost more CPU than the agent's whole hot path.

Compaction rewrites the log into the partitioned layout
``date=YYYY-MM-DD/asset=<asset>/part-<seq>-<uuid>.parquet`` (temp file + fsync +
rename + directory fsync) once it holds ``wal_max_rows`` rows or its oldest
segment is ``wal_max_age_s`` old, at :meth:`ParquetStore.close` and at start
(segments left by a crash). With ``background=True`` it is driven by the store's
own compactor thread (:meth:`ParquetStore.start`), never by the thread that
flushes: 500k rows into 1,000 partitions take seconds of disk waits that would
otherwise stall scoring and alerting. With ``child=True`` as well (the agent) that
thread hands the work to a short-lived child process (:mod:`edge.history.compact`),
so this module, and the agent, never import pyarrow: the agent's RSS stays that of
its hot path, and the compaction's peak goes away with the child. A compaction takes the segments
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
import logging
import operator
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.core.durable import fsync_path
from edge.core.errors import CompactionAbandoned, StorageError
from edge.core.trim import Trimmer
from edge.history.layout import DAY, asset_dir, day_of, dir_asset  # noqa: F401 (re-exported)
from edge.history.wal import Columns, Wal
from edge.ingest.readings import Reading, Series

if TYPE_CHECKING:
    import pyarrow as pa

    from edge.core.metrics import StateRow

log = logging.getLogger(__name__)

COMPACT_SWITCH_S = 0.0005  # GIL switch interval while the compactor thread compacts
# The package root, so the compaction child runs this very code whatever its cwd.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Names:
    """Codes of names (assets or signals) for buffered rows: each name is stored once,
    rows hold int32 codes. Codes only grow; a flush writes the names its rows use."""

    __slots__ = ("codes", "names")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def one(self, name: str) -> int:
        c = self.codes.get(name)
        if c is None:
            c = self.codes[name] = len(self.names)
            self.names.append(name)
        return c

    def encode(self, rows: Sequence[Any], field: Callable[[Any], str] | None = None
               ) -> np.ndarray:
        """The codes of ``rows`` (names, or ``field(row)`` of each row)."""
        # map() over the dict runs in C: ~0.03 us a row, where coding each row's string
        # at flush in a generator cost ~0.2 us (two thirds of the store's CPU).
        names = rows if field is None else map(field, rows)
        try:
            return np.fromiter(map(self.codes.__getitem__, names), np.int32, len(rows))
        except KeyError:  # a name not seen before: code the new ones, then all again
            names = rows if field is None else map(field, rows)
            return np.fromiter(map(self.one, names), np.int32, len(rows))


class _Coding:
    """One set of asset and signal codes; chunks keep the one they were coded with."""

    __slots__ = ("assets", "signals")

    def __init__(self) -> None:
        self.assets = _Names()
        self.signals = _Names()

    def size(self) -> int:
        return len(self.assets.names) + len(self.signals.names)


_ASSET, _SIGNAL, _TS, _VALUE = (operator.itemgetter(i) for i in range(4))  # Reading's fields

# Names coded at most before a flush starts a new coding (names from topics are
# bounded by the topic rules, but not in number: a flood of new asset names must not
# grow the store's dictionaries for good).
MAX_CODED_NAMES = 200_000


@dataclass
class _Chunk:
    coding: _Coding
    asset: np.ndarray  # int32 codes into coding.assets
    signal: np.ndarray  # int32 codes into coding.signals
    ts: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.size)


class ParquetStore:
    def __init__(self, root: Path, max_buffer_rows: int = 2_000_000,
                 compression: str = "zstd", wal_max_rows: int = 500_000,
                 wal_max_age_s: float = 300.0, background: bool = False,
                 child: bool = False, wal_keep_s: float = 0.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_buffer_rows = max_buffer_rows
        self.compression = compression
        self.wal_max_rows = wal_max_rows
        self.wal_max_age_s = wal_max_age_s
        # The agent's window warm-up reads the log's newest wal_keep_s seconds at start:
        # a compaction leaves them in the log (a close with compaction takes all).
        self.wal_keep_s = wal_keep_s
        self.background = background
        self.child = child
        self._child: subprocess.Popen[str] | None = None  # the compaction child, while running
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
        self._coding = _Coding()
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

    def metric_state(self) -> list[StateRow]:
        """The store's counters and gauges, read at scrape time."""
        return [
            ("forewarn_storage_rows_written_total", "Readings written to Parquet", "counter",
             float(self.rows_written)),
            ("forewarn_storage_rows_dropped_total",
             "Readings dropped from a full history buffer (disk full)", "counter",
             float(self.rows_dropped)),
            ("forewarn_storage_flush_errors_total", "Failed history flushes", "counter",
             float(self.flush_errors)),
            ("forewarn_storage_buffered_rows", "Readings waiting for the next flush", "gauge",
             float(self.buffered_rows)),
            ("forewarn_storage_compactions_total", "Write-ahead log compactions into Parquet "
             "partitions", "counter", float(self.compactions)),
            ("forewarn_storage_compaction_errors_total", "Failed compactions (the log is kept "
             "and retried)", "counter", float(self.compaction_errors)),
            ("forewarn_storage_wal_bytes", "Bytes in the write-ahead log, not yet compacted",
             "gauge", float(self.wal.bytes)),
        ]

    # -- buffering -------------------------------------------------------------

    def append(self, asset: str, signal: str | Sequence[str] | np.ndarray,
               ts: float | Sequence[float] | np.ndarray,
               value: float | Sequence[float] | np.ndarray) -> None:
        """Buffer rows of one asset; ``signal`` may be one name for all rows."""
        t = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        coding = self._coding
        if isinstance(signal, str):
            s = np.full(t.size, coding.signals.one(signal), dtype=np.int32)
        else:
            names = [str(x) for x in np.asarray(signal, dtype=object).ravel()]
            s = coding.signals.encode(names)
        if not (t.size == v.size == s.size):
            raise ValueError(f"append({asset!r}): ts/signal/value lengths {t.size}/{s.size}/"
                             f"{v.size} differ")
        if t.size:
            a = np.full(t.size, coding.assets.one(asset), dtype=np.int32)
            self._push(_Chunk(coding, a, s, t, v))

    def append_readings(self, items: Iterable[Reading | Series]) -> None:
        """Buffer decoder output: point readings and evenly spaced series."""
        # Point readings of all assets go in one chunk: this runs once per decoded
        # batch on the hot path, and per-asset arrays cost more than the rows.
        items = items if isinstance(items, list | tuple) else list(items)
        if not items:
            return
        try:  # the common batch, points only: no per-item loop, no check of each type
            self._push(self._points(items))  # type: ignore[arg-type]
            return
        except TypeError:  # a Series is no tuple: the first column's itemgetter refuses it
            pass
        points: list[Reading] = []
        for it in items:
            if isinstance(it, Series):
                ts = it.t0 + it.dt * np.arange(it.values.size)
                self.append(it.asset, it.signal, ts, it.values)
            else:
                points.append(it)
        if points:
            self._push(self._points(points))

    def _points(self, points: Sequence[Reading]) -> _Chunk:
        """Point readings as one chunk, each column in C (the names through their codes).

        The asset column comes first: it raises TypeError on a Series before any row
        is buffered. Not zip(*points): it makes an iterator per reading, and their
        allocations set off the GC. Not ``set(map(type, items)) <= {Reading}`` first
        either: that pass cost ~220 instructions a reading, 0.5 % of the hot path.
        """
        n = len(points)
        coding = self._coding
        assets = coding.assets.encode(points, _ASSET)
        return _Chunk(coding, assets, coding.signals.encode(points, _SIGNAL),
                      np.fromiter(map(_TS, points), np.float64, n),
                      np.fromiter(map(_VALUE, points), np.float64, n))

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
                self._buf[0] = _Chunk(head.coding, head.asset[over:], head.signal[over:],
                                      head.ts[over:], head.value[over:])
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
                if self._coding.size() > MAX_CODED_NAMES:
                    self._coding = _Coding()  # the taken chunks keep theirs
            n = sum(len(c) for c in chunks)
            if chunks:
                try:
                    self.wal.append(_columns(chunks))
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
            if self.wal.due(self.wal_max_rows, self.wal_max_age_s, self.wal_keep_s):
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
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # it rolls back between two files and exits
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
                # In-thread compaction: a busy pipeline thread holds the GIL for up
                # to the switch interval (5 ms) each time this thread returns from a
                # syscall, and compaction makes several per partition file: with the
                # pipeline saturated, 1,000 files took 43-55 s (bench.hotpath_micro
                # stall), 20 s with 0.5 ms, the pipeline's throughput unchanged. Only
                # while compacting; a child has a GIL of its own.
                switch = sys.getswitchinterval()
                if not self.child:
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
        if (self.wal.due(self.wal_max_rows, self.wal_max_age_s, self.wal_keep_s)
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
            segs = self.wal.take(0.0 if self._closing.is_set() else self.wal_keep_s)
            if not segs:
                return 0
            written: list[tuple[Path, bool]] = []
            try:
                rows = self._rewrite(segs, written, cancel)
            except CompactionAbandoned:
                undo(written)
                self.wal.put_back(segs)
                self.compactions_abandoned += 1
                log.info("%s: compaction abandoned at close (%d files undone); the log "
                         "is compacted at the next start", self.root, len(written))
                return 0
            except BaseException:
                undo(written)
                self.wal.put_back(segs)
                raise
            self.wal.drop(segs)
            self.compactions += 1
            return rows

    def _rewrite(self, segs: list[Path], written: list[tuple[Path, bool]],
                 cancel: threading.Event | None) -> int:
        """Write the rows of ``segs`` as one file per (date, asset); returns the rows.

        Every durable file goes into ``written`` at once, so that :meth:`compact` can
        undo an unfinished compaction.
        """
        def note(path: Path, created: bool, size: int) -> None:
            written.append((path, created))
            self.bytes_written += size
            with self._lock:
                self._written[path.parent] = time.monotonic()

        if self.child:
            return self._rewrite_in_child(segs, note, cancel)
        from edge.history import compact  # pyarrow, in this process

        try:
            return compact.rewrite(self.root, segs, self.compression, note,
                                   lambda: cancel is not None and cancel.is_set())
        finally:
            # One compaction of 500k rows otherwise left the process ~60 MB larger for
            # good: pyarrow's pool and glibc's arena keep the peak mapped.
            _give_back_memory()

    def _rewrite_in_child(self, segs: list[Path], note: Callable[[Path, bool, int], None],
                          cancel: threading.Event | None) -> int:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "edge.history.compact", "--root", str(self.root),
               "--compression", self.compression, "--parent", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        with self._lock:
            self._child = proc
        rows: int | None = None
        error = ""
        try:
            if cancel is not None and cancel.is_set():  # closing began before it was known
                proc.terminate()
            try:
                proc.stdin.write("".join(f"{p}\n" for p in segs))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at start: its exit status tells
            for line in proc.stdout:
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "written":
                    created, size, path = rest.split(" ", 2)
                    note(Path(path), created == "1", int(size))
                elif kind == "done":
                    rows = int(rest)
                elif kind == "error":
                    error = rest
            rc = proc.wait()
        finally:
            with self._lock:
                self._child = None
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if rows is not None and rc == 0:
            return rows
        if cancel is not None and cancel.is_set():
            raise CompactionAbandoned
        raise StorageError(f"{self.root}: compaction process exited with status {rc}"
                           f"{': ' + error if error else ''}")

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
        from edge.history.history import read_history

        return read_history(self.root, since, until, assets)


def undo(written: list[tuple[Path, bool]]) -> None:
    """Delete the partition files of an unfinished compaction (their rows stay in the log).

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
            fsync_path(d)


def _columns(chunks: list[_Chunk]) -> Columns:
    """The buffered rows as one segment's columns: the codes of the names they use."""
    asset = np.concatenate([c.asset for c in chunks])
    signal = np.concatenate([c.signal for c in chunks])
    codings = {id(c.coding): c.coding for c in chunks}
    if len(codings) == 1:
        coding = chunks[0].coding
        assets, asset = _used(asset, coding.assets.names)
        signals, signal = _used(signal, coding.signals.names)
    else:  # a new coding started while rows of the old one were buffered: re-code
        assets, signals, parts = [], [], []
        a_names: dict[str, int] = {}
        s_names: dict[str, int] = {}
        for c in chunks:
            a_map = np.array([a_names.setdefault(x, len(a_names))
                              for x in c.coding.assets.names], np.int32)
            s_map = np.array([s_names.setdefault(x, len(s_names))
                              for x in c.coding.signals.names], np.int32)
            parts.append((a_map[c.asset], s_map[c.signal]))
        assets, signals = list(a_names), list(s_names)
        asset = np.concatenate([a for a, _ in parts])
        signal = np.concatenate([s for _, s in parts])
    return Columns(assets, signals, asset, signal, np.concatenate([c.ts for c in chunks]),
                   np.concatenate([c.value for c in chunks]))


def _used(codes: np.ndarray, names: list[str]) -> tuple[list[str], np.ndarray]:
    """Only the names ``codes`` use, and the codes into that shorter list."""
    n = len(names)  # names only grow: codes taken before now are all below n
    used = np.bincount(codes, minlength=n)[:n] > 0
    if used.all():
        return names[:n], codes
    keep = np.flatnonzero(used)
    remap = np.zeros(n, np.int32)
    remap[keep] = np.arange(keep.size, dtype=np.int32)
    return [names[i] for i in keep.tolist()], remap[codes]


def _give_back_memory() -> None:
    """Return an in-process compaction's freed memory to the OS.

    pyarrow's pool (mimalloc) and glibc malloc (numpy's arrays, in the compactor
    thread's arena) otherwise keep the compaction's peak mapped for good.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    Trimmer()(force=True)
