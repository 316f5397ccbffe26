"""Compaction: write-ahead segments rewritten as one Parquet file per (date, asset).

Runs in the agent's compaction child process (``python -m edge.history.compact``,
started by :class:`~edge.history.parquet.ParquetStore` with ``child=True``) or, for the
trainer and tests, on the store's own thread. The child is why the agent stays small:
pyarrow (~28 MB mapped) and the compaction's peak live in a process that exits when
the job is done, so no allocator keeps the peak mapped in the agent, and its GIL is
not the pipeline's.

Child protocol: segment paths on stdin, one per line; on stdout one line per durable
partition file, ``written <dir created 0|1> <bytes> <path>``, then ``done <rows>``,
or ``error <message>`` and exit status 2. SIGTERM (the agent is closing) makes the
child stop between two files, delete the files it wrote and exit with status 143;
the parent deletes them too, should the child die harder. The child is sent SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``), so a SIGKILLed agent leaves no orphan
writing beside its successor.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge.core.durable import fsync_path
from edge.core.errors import CompactionAbandoned, StorageError
from edge.history import arrow
from edge.history import wal as wal_mod
from edge.history.layout import DAY, asset_dir, day_of
from edge.history.parquet import undo

# (partition file, whether its asset directory was created, bytes)
Written = Callable[[Path, bool, int], None]


@dataclass
class Log:
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
        """(date, asset, rows as :data:`~edge.history.arrow.SCHEMA`) of one group."""
        i = int(idx[0])
        asset = self.assets[int(self.asset[i])]
        signal_col = self.signals.take(arrow.int32s(self.signal[idx]))
        table = pa.Table.from_arrays([arrow.repeated(asset, idx.size), signal_col,
                                      arrow.floats(self.ts[idx]),
                                      arrow.floats(self.value[idx])], schema=arrow.SCHEMA)
        return day_of(float(self.ts[i])), asset, table


def read_log(segs: list[Path]) -> Log:
    """The rows of ``segs`` (oldest first) as one :class:`Log`.

    The log stays in its compact form (codes and floats, 24 bytes a row) and one
    sort order over it picks each partition's rows; strings exist only for one
    partition at a time. Each segment has its own names; their codes are mapped to
    codes shared by the whole log. The columns are allocated once, from the row
    counts in the segments' headers, and filled one segment at a time: only one
    segment's bytes are held beside them.
    """
    assets: dict[str, int] = {}
    signals: dict[str, int] = {}
    # Legacy (.arrow) segments have no cheap row count: read once, here, and kept.
    legacy = {p: _read(p) for p in segs if p.suffix == wal_mod.LEGACY_SUFFIX}
    total = sum(legacy[p].rows if p in legacy else _rows_of(p) for p in segs)
    out = (np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.float64),
           np.empty(total, np.float64))
    at = 0
    for p in segs:
        seg = legacy.pop(p) if p in legacy else _read(p)
        end = at + seg.rows
        if end > total:
            raise StorageError(f"{p}: WAL segment changed while compacting ({seg.rows} rows)")
        out[0][at:end] = _remap(seg.assets, assets)[seg.asset]
        out[1][at:end] = _remap(seg.signals, signals)[seg.signal]
        out[2][at:end] = seg.ts
        out[3][at:end] = seg.value
        at = end
        del seg
    if at != total:
        raise StorageError(f"WAL segments held {at} rows, their headers said {total}")
    return Log(list(assets), arrow.strings(list(signals)), *out)


def _read(path: Path) -> wal_mod.Columns:
    try:
        return wal_mod.read_columns(path)
    except OSError as exc:
        raise StorageError(f"{path}: unreadable WAL segment ({exc})") from exc


def _rows_of(path: Path) -> int:
    try:
        return wal_mod.read_rows(path)
    except OSError as exc:
        raise StorageError(f"{path}: unreadable WAL segment ({exc})") from exc


def _remap(own: list[str], shared: dict[str, int]) -> np.ndarray:
    """Codes of a segment's names in the names shared by the log (extended as needed)."""
    return np.fromiter((shared.setdefault(x, len(shared)) for x in own), np.int32, len(own))


def rewrite(root: Path, segs: list[Path], compression: str, on_written: Written,
            cancelled: Callable[[], bool] = lambda: False) -> int:
    """Write the rows of ``segs`` as one durable file per (date, asset); returns the rows.

    ``cancelled`` is checked between two files (raises
    :class:`~edge.core.errors.CompactionAbandoned`). The caller owns the segments and the
    undo of ``on_written`` files on any exception.
    """
    log_ = read_log(segs)
    order, cuts = log_.partition_order()
    for a, b in itertools.pairwise([0, *cuts.tolist(), order.size]):
        if cancelled():
            raise CompactionAbandoned
        on_written(*write_partition(root, *log_.partition(order[a:b]), compression))
    return int(order.size)


def write_partition(root: Path, day: str, asset: str, table: pa.Table,
                    compression: str) -> tuple[Path, bool, int]:
    """One durable partition file: temp file, fsync, rename, directory fsyncs."""
    d = root / f"date={day}" / asset_dir(asset)
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = d / f".{name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression=compression)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(d)
    if created:
        fsync_path(d.parent)
        fsync_path(root)
    return d / name, created, (d / name).stat().st_size


# -- the child process ----------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m edge.history.compact",
        description="Compact write-ahead segments (paths on stdin, one per line) into "
                    "the Parquet history under --root. Started by the agent; prints one "
                    "'written' line per durable file, then 'done <rows>'.")
    ap.add_argument("--root", type=Path, required=True, help="history root (the state's history/)")
    ap.add_argument("--compression", default="zstd", help="Parquet codec (default zstd)")
    ap.add_argument("--parent", type=int, default=0,
                    help="pid of the agent: exit when it dies (0: do not watch)")
    ap.add_argument("--nice", type=int, default=10,
                    help="lower the CPU priority by this much (default 10): scoring first")
    args = ap.parse_args(argv)
    stop = []  # SIGTERM: roll back between two files (a file half written is never left)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    if args.parent:
        _die_with_parent(args.parent)
    if args.nice:
        os.nice(args.nice)
    # One file at a time, single-threaded: no pool threads under the unit's TasksMax.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    segs = [Path(line) for line in sys.stdin.read().splitlines() if line.strip()]

    done: list[tuple[Path, bool]] = []

    def written(path: Path, created: bool, size: int) -> None:
        done.append((path, created))
        print(f"written {int(created)} {size} {path}", flush=True)

    try:
        rows = rewrite(args.root, segs, args.compression, written, lambda: bool(stop))
    except CompactionAbandoned:
        undo(done)
        print("abandoned", flush=True)
        return 143
    except (OSError, StorageError, pa.ArrowException) as exc:
        undo(done)
        print(f"error {exc}".replace("\n", " "), flush=True)
        return 2
    print(f"done {rows}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
