"""Write-ahead log of the Parquet history: one Arrow IPC segment per flush.

A flush with rows of 1,000 assets is one file write and two fsyncs (the file, then
its directory after the rename), not 1,000 Parquet files. Segments live in
``<root>/_wal/seg-<seq>-<uuid>.arrow``; names sort in write order. A crash leaves
at most a ``*.tmp`` file (removed at the next start); a renamed segment is complete.

Compaction (see :class:`~edge.store.parquet.ParquetStore`) rewrites segments into
the partitioned layout and deletes them only once those Parquet files are durable,
so a crash in between leaves the same rows twice, which reads deduplicate.
"""

from __future__ import annotations

import logging
import os
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


def read_segment(path: Path, schema: pa.Schema) -> pa.Table:
    """Rows of one segment; FileNotFoundError when compaction removed it meanwhile."""
    import pyarrow as pa  # lazily: retention lists segments in agents without storage

    with pa.memory_map(str(path)) as src:
        t = pa.ipc.open_file(src).read_all()
    return t.cast(schema) if t.schema != schema else t


class Wal:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / WAL_DIR
        self._seq = time.time_ns()
        self.rows = 0  # rows in segments not yet compacted
        self.bytes = 0
        self.first_at: float | None = None  # monotonic time of the oldest segment
        existing = segments(root)
        for p in existing:
            try:
                self.bytes += p.stat().st_size
            except FileNotFoundError:
                continue
        if existing:
            # Left by a crash (or a failed compaction): due for compaction at once.
            self.first_at = -float("inf")
            self.rows = -1  # unknown until read; only compaction needs the count

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
        self.bytes += (self.dir / name).stat().st_size
        self.rows = table.num_rows if self.rows < 0 else self.rows + table.num_rows
        if self.first_at is None:
            self.first_at = time.monotonic()
        return self.dir / name

    def due(self, max_rows: int, max_age_s: float) -> bool:
        if self.first_at is None:
            return False
        return self.rows < 0 or self.rows >= max_rows or \
            time.monotonic() - self.first_at >= max_age_s

    def drop(self, done: list[Path]) -> None:
        """Delete compacted segments (their rows are durable in Parquet)."""
        for p in done:
            try:
                size = p.stat().st_size
                p.unlink()
                self.bytes -= size
            except FileNotFoundError:
                continue
        fsync_dir(self.dir)
        if not segments(self.dir.parent):
            self.rows, self.bytes, self.first_at = 0, 0, None
