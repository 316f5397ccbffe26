"""Write-ahead log of the Parquet history: one Arrow IPC segment per flush.

A flush with rows of 1,000 assets is one file write and two fsyncs (the file, then
its directory after the rename), not 1,000 Parquet files. Segments live in
``<root>/_wal/seg-<seq>-<uuid>.arrow``; names sort in write order. A crash leaves
at most a ``*.tmp`` file (removed at the next start); a renamed segment is complete
and never changes again.

Compaction (see :class:`~edge.store.parquet.ParquetStore`) *takes* the segments
written so far (:meth:`Wal.take`); flushes meanwhile append new segments, which
the next compaction takes. Taken segments are deleted (:meth:`Wal.drop`) only once
their rows are durable in Parquet, or handed back (:meth:`Wal.put_back`) when the
compaction fails or is abandoned. A crash in between leaves the same rows in the
log and in Parquet, which reads deduplicate. The bookkeeping is thread-safe: the
pipeline thread appends while the store's compactor thread takes and drops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

WAL_DIR = "_wal"


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segments(root: Path) -> list[Path]:
    """The complete segments under ``root`` (the history root), oldest first."""
    d = Path(root) / WAL_DIR
    if not d.is_dir():
        return []
    return sorted(d.glob("seg-*.arrow"))


def read_segment(path: Path, schema: pa.Schema | None) -> pa.Table:
    """Rows of one segment, cast to ``schema`` (``None``: as written, asset and signal
    dictionary-encoded); FileNotFoundError when compaction removed it meanwhile.

    The file is memory-mapped: its pages count as RssFile (page cache, reclaimable
    and unmapped when the map closes), and the lz4-compressed buffers are
    decompressed into pyarrow's pool, so the map is closed before this returns.
    """
    import pyarrow as pa  # lazily: retention lists segments in agents without storage

    with pa.memory_map(str(path)) as src:
        t = pa.ipc.open_file(src).read_all()
    return t.cast(schema) if schema is not None and t.schema != schema else t


class Wal:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / WAL_DIR
        self._seq = time.time_ns()
        self._lock = threading.Lock()
        # Segments not taken by a compaction: path -> (rows or -1 if unknown,
        # bytes, monotonic time written). Insertion order is write order.
        self._pending: dict[Path, tuple[int, int, float]] = {}
        self._taken: dict[Path, tuple[int, int, float]] = {}
        for p in segments(root):
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            # Left by a crash (or a failed compaction): due for compaction at once;
            # the row count is unknown until read, and only compaction needs it.
            self._pending[p] = (-1, size, -float("inf"))

    @property
    def rows(self) -> int:
        """Rows in segments not yet compacted (-1 while a left-over segment is unread)."""
        with self._lock:
            entries = [*self._pending.values(), *self._taken.values()]
        return -1 if any(r < 0 for r, _, _ in entries) else sum(r for r, _, _ in entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(b for _, b, _ in [*self._pending.values(), *self._taken.values()])

    @property
    def first_at(self) -> float | None:
        """Monotonic time the oldest segment not taken by a compaction was written."""
        with self._lock:
            return min((t for _, _, t in self._pending.values()), default=None)

    def append(self, table: pa.Table) -> Path:
        """Write ``table`` as one segment; returns once it is durable."""
        import pyarrow as pa

        # lz4 keeps the log small (it shares the history's disk budget) for little CPU.
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        created = not self.dir.exists()
        if created:
            self.dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.dir.parent)
        self._seq += 1
        name = f"seg-{self._seq:020d}-{uuid.uuid4().hex[:12]}.arrow"
        tmp = self.dir / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                with pa.ipc.new_file(fh, table.schema, options=opts) as w:
                    w.write_table(table)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / name)
            fsync_dir(self.dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        path = self.dir / name
        size = path.stat().st_size
        with self._lock:
            self._pending[path] = (table.num_rows, size, time.monotonic())
        return path

    def due(self, max_rows: int, max_age_s: float) -> bool:
        """Whether the segments not taken yet hold ``max_rows`` or are ``max_age_s`` old."""
        with self._lock:
            if not self._pending:
                return False
            rows = oldest = 0.0
            for i, (r, _, t) in enumerate(self._pending.values()):
                if r < 0:
                    return True
                rows += r
                oldest = t if i == 0 else min(oldest, t)
        return rows >= max_rows or time.monotonic() - oldest >= max_age_s

    def take(self) -> list[Path]:
        """Hand every segment written so far to one compaction, oldest first.

        Later appends go to new segments that the next compaction takes.
        """
        with self._lock:
            out = list(self._pending)
            self._taken.update(self._pending)
            self._pending.clear()
        return out

    def put_back(self, paths: list[Path]) -> None:
        """Return taken segments (compaction failed or abandoned); they stay due."""
        with self._lock:
            back = {p: self._taken.pop(p) for p in paths if p in self._taken}
            self._pending = back | self._pending  # older than anything appended meanwhile

    def drop(self, done: list[Path]) -> None:
        """Delete compacted segments (their rows are durable in Parquet)."""
        for p in done:
            p.unlink(missing_ok=True)
            with self._lock:
                self._taken.pop(p, None)
        if self.dir.is_dir():
            fsync_dir(self.dir)
