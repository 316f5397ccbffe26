"""Write-ahead log of the Parquet history: one segment file per flush.

A flush with rows of 1,000 assets is one file write and two fsyncs (the file, then
its directory after the rename), not 1,000 Parquet files. Segments live in
``<root>/_wal/seg-<seq>-<uuid>.fwal``; names sort in write order. A crash leaves
at most a ``*.tmp`` file (removed at the next start); a renamed segment is complete
and never changes again.

The format is this module's own, written and read with numpy alone, so the agent
never imports pyarrow (~28 MB of RSS) to log its rows; compaction, the trainer and
``forewarn export`` read segments as Arrow tables (:func:`read_segment`)::

    b"FWWAL1\n\0"                      magic and version (8 bytes)
    <u4 rows> <u4 names_len>             little-endian
    names_len bytes of JSON              [[asset, ...], [signal, ...]]
    rows x <i4 asset code>, rows x <i4 signal code> (indices into the names)
    rows x <f8 ts>, rows x <f8 value>
    <u4 CRC-32 of everything above>

Uncompressed (24 bytes a row): a segment lives minutes, and zlib would cost the
pipeline thread more CPU than the bytes are worth. Segments written by earlier
versions (``*.arrow``, Arrow IPC) are still read and compacted.

Compaction (see :class:`~edge.history.parquet.ParquetStore`) *takes* the segments
written so far (:meth:`Wal.take`); flushes meanwhile append new segments, which
the next compaction takes. Taken segments are deleted (:meth:`Wal.drop`) only once
their rows are durable in Parquet, or handed back (:meth:`Wal.put_back`) when the
compaction fails or is abandoned. A crash in between leaves the same rows in the
log and in Parquet, which reads deduplicate. The bookkeeping is thread-safe: the
pipeline thread appends while the store's compactor thread takes and drops.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from edge.core.durable import fsync_path
from edge.core.errors import StorageError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

WAL_DIR = "_wal"
MAGIC = b"FWWAL1\n\0"
SUFFIX = ".fwal"
LEGACY_SUFFIX = ".arrow"  # Arrow IPC segments of versions before the .fwal format
_HEAD = struct.Struct("<II")
_CRC = struct.Struct("<I")


@dataclass
class Columns:
    """Rows of one segment (or one flush): asset and signal as codes into name lists."""

    assets: list[str]
    signals: list[str]
    asset: np.ndarray  # int32 codes into ``assets``
    signal: np.ndarray  # int32 codes into ``signals``
    ts: np.ndarray  # float64, epoch s
    value: np.ndarray  # float64

    @property
    def rows(self) -> int:
        return int(self.ts.size)

    def encode(self) -> list[bytes | memoryview]:
        """The segment file's bytes, as pieces written in order (no copy of the arrays)."""
        names = json.dumps([self.assets, self.signals], ensure_ascii=False).encode()
        pieces: list[bytes | memoryview] = [MAGIC, _HEAD.pack(self.rows, len(names)), names]
        for arr, dtype in ((self.asset, "<i4"), (self.signal, "<i4"), (self.ts, "<f8"),
                           (self.value, "<f8")):
            flat = np.ascontiguousarray(arr, dtype=dtype).view(np.uint8)
            pieces.append(memoryview(flat.data))
        crc = 0
        for p in pieces:
            crc = zlib.crc32(p, crc)
        pieces.append(_CRC.pack(crc))
        return pieces


def _header(path: Path, data: bytes, tail: int = 0) -> tuple[int, int]:
    """(rows, names_len) from the start of a segment; StorageError unless it is one."""
    if len(data) < len(MAGIC) + _HEAD.size + tail or not data.startswith(MAGIC):
        raise StorageError(f"{path}: not a WAL segment (magic {data[:8]!r}, expected {MAGIC!r})")
    rows, names_len = _HEAD.unpack_from(data, len(MAGIC))
    return int(rows), int(names_len)


def decode(path: Path, data: bytes) -> Columns:
    """Parse one ``.fwal`` segment; StorageError naming the file and the field at fault."""
    rows, names_len = _header(path, data, _CRC.size)
    body, (crc,) = memoryview(data)[:-_CRC.size], _CRC.unpack(data[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise StorageError(f"{path}: WAL segment checksum mismatch (file damaged)")
    at = len(MAGIC) + _HEAD.size
    expected = at + names_len + rows * 24 + _CRC.size
    if len(data) != expected:
        raise StorageError(f"{path}: WAL segment is {len(data)} bytes, header says "
                           f"{expected} (rows = {rows}, names_len = {names_len})")
    try:
        assets, signals = json.loads(bytes(body[at:at + names_len]))
    except (ValueError, TypeError) as exc:
        raise StorageError(f"{path}: WAL segment names: {exc}") from exc
    at += names_len
    cols = []
    for dtype in ("<i4", "<i4", "<f8", "<f8"):
        width = np.dtype(dtype).itemsize
        cols.append(np.frombuffer(data, dtype, rows, at).astype(dtype[1:], copy=False))
        at += rows * width
    out = Columns([str(a) for a in assets], [str(s) for s in signals], *cols)
    for field, codes, names in (("asset", out.asset, out.assets),
                                ("signal", out.signal, out.signals)):
        if rows and (int(codes.min()) < 0 or int(codes.max()) >= len(names)):
            raise StorageError(f"{path}: WAL {field} code {int(codes.max())} outside its "
                               f"{len(names)} names")
    return out


def read_rows(path: Path) -> int:
    """Rows in one ``.fwal`` segment, from its header alone."""
    with open(path, "rb") as fh:
        return _header(path, fh.read(len(MAGIC) + _HEAD.size))[0]


def read_columns(path: Path) -> Columns:
    """One segment as numpy columns; FileNotFoundError when compaction removed it.

    Legacy ``.arrow`` segments need pyarrow (imported here only for them).
    """
    path = Path(path)
    if path.suffix == LEGACY_SUFFIX:
        return _legacy_columns(path)
    return decode(path, path.read_bytes())


def segments(root: Path) -> list[Path]:
    """The complete segments under ``root`` (the history root), oldest first."""
    d = Path(root) / WAL_DIR
    if not d.is_dir():
        return []
    return sorted([*d.glob(f"seg-*{SUFFIX}"), *d.glob(f"seg-*{LEGACY_SUFFIX}")],
                  key=lambda p: p.name)


def read_segment(path: Path, schema: pa.Schema | None) -> pa.Table:
    """Rows of one segment as an Arrow table, cast to ``schema`` (``None``: asset and
    signal dictionary-encoded); FileNotFoundError when compaction removed it meanwhile.
    """
    import pyarrow as pa  # lazily: only readers of the history (trainer, export) need it

    from edge.history import arrow

    path = Path(path)
    if path.suffix == LEGACY_SUFFIX:
        with pa.memory_map(str(path)) as src:
            t = pa.ipc.open_file(src).read_all()
    else:
        t = arrow.table(read_columns(path))
    return t.cast(schema) if schema is not None and t.schema != schema else t


def _legacy_columns(path: Path) -> Columns:
    import pyarrow as pa

    from edge.history import arrow

    try:
        t = read_segment(path, None)
    except pa.ArrowException as exc:
        raise StorageError(f"{path}: unreadable WAL segment ({exc})") from exc
    return arrow.columns(path, t)


def write_pieces(fh: BinaryIO, pieces: list[bytes | memoryview]) -> None:
    for p in pieces:
        fh.write(p)


class Wal:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / WAL_DIR
        self._seq = time.time_ns()
        self._lock = threading.Lock()
        # Segments not taken by a compaction: path -> (rows or -1 if unknown,
        # bytes, monotonic time written). Insertion order is write order.
        self._pending: dict[Path, tuple[int, int, float]] = {}
        self._taken: dict[Path, tuple[int, int, float]] = {}
        now_wall, now_mono = time.time(), time.monotonic()
        for p in segments(root):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            # Left by a crash (or a failed compaction): due for compaction at once;
            # the row count is unknown until read, and only compaction needs it. Its
            # age comes from the file, so a kept tail (take(keep_s)) stays kept.
            age = max(0.0, now_wall - st.st_mtime)
            self._pending[p] = (-1, st.st_size, now_mono - age)

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

    def append(self, cols: Columns) -> Path:
        """Write ``cols`` as one segment; returns once it is durable."""
        created = not self.dir.exists()
        if created:
            self.dir.mkdir(parents=True, exist_ok=True)
            fsync_path(self.dir.parent)
        self._seq += 1
        name = f"seg-{self._seq:020d}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        tmp = self.dir / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                write_pieces(fh, cols.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / name)
            fsync_path(self.dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        path = self.dir / name
        size = path.stat().st_size
        with self._lock:
            self._pending[path] = (cols.rows, size, time.monotonic())
        return path

    def due(self, max_rows: int, max_age_s: float, keep_s: float = 0.0) -> bool:
        """Whether the segments not taken yet hold ``max_rows`` or are ``max_age_s`` old
        (segments younger than ``keep_s`` do not count: :meth:`take` leaves them)."""
        now = time.monotonic()
        with self._lock:
            entries = [e for e in self._pending.values() if now - e[2] >= keep_s]
        if not entries:
            return False
        if any(r < 0 for r, _, _ in entries):
            return True
        rows = sum(r for r, _, _ in entries)
        oldest = min(t for _, _, t in entries)
        return rows >= max_rows or now - oldest >= max_age_s

    def take(self, keep_s: float = 0.0) -> list[Path]:
        """Hand every segment written so far to one compaction, oldest first.

        Segments written less than ``keep_s`` ago stay in the log: the agent warms
        its window buffers from the log's tail at start (edge/history/warm.py), so that
        tail must not move into Parquet, which the agent does not read. Later appends
        go to new segments that the next compaction takes.
        """
        now = time.monotonic()
        with self._lock:
            out = [p for p, e in self._pending.items() if now - e[2] >= keep_s]
            for p in out:
                self._taken[p] = self._pending.pop(p)
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
            fsync_path(self.dir)
