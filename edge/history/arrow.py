"""Arrow views of the history's rows, built from raw buffers.

Only processes that read or compact the history import this (and so pyarrow):
compaction, the trainer, ``forewarn export``. ``pa.array``/``pa.table`` on numpy or
list input import pandas on first use (pyarrow 25), 0.25 s of CPU and 48 MB of RSS
that none of them needs, so every array here is made from its buffers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from edge.core.errors import StorageError
from edge.history.wal import Columns

SCHEMA = pa.schema([("asset", pa.string()), ("signal", pa.string()),
                    ("ts", pa.float64()), ("value", pa.float64())])


def table(cols: Columns) -> pa.Table:
    """Rows as a table with asset and signal dictionary-encoded (cast to SCHEMA to expand)."""
    return pa.Table.from_arrays([dictionary(cols.asset, cols.assets),
                                 dictionary(cols.signal, cols.signals),
                                 floats(cols.ts), floats(cols.value)], names=SCHEMA.names)


def columns(path: Path, t: pa.Table) -> Columns:
    """A table of SCHEMA's columns (strings or dictionaries) as :class:`Columns`."""
    assets: dict[str, int] = {}
    signals: dict[str, int] = {}
    batches = t.to_batches()
    out = []
    for name, names in (("asset", assets), ("signal", signals)):
        out.append(_joined([codes(path, b, name, names) for b in batches], np.int32))
    for name in ("ts", "value"):
        pieces = []
        for b in batches:
            col = column(path, b, name)
            if col.type != pa.float64() or col.null_count:
                raise StorageError(f"{path}: WAL column {name!r} is {col.type} with "
                                   f"{col.null_count} nulls, expected float64 without")
            pieces.append(numpy(col, np.float64).copy())
        out.append(_joined(pieces, np.float64))
    return Columns(list(assets), list(signals), *out)


def floats(v: np.ndarray) -> pa.Array:
    v = np.ascontiguousarray(v, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), v.size, [None, pa.py_buffer(v)])


def int32s(v: np.ndarray) -> pa.Array:
    v = np.ascontiguousarray(v, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), v.size, [None, pa.py_buffer(v)])


def strings(values: list[str]) -> pa.Array:
    raw = [v.encode() for v in values]
    offsets = np.zeros(len(raw) + 1, np.int32)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(raw),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raw))])


def repeated(value: str, n: int) -> pa.Array:
    """One string ``n`` times (a partition's asset column)."""
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    return pa.Array.from_buffers(pa.string(), n,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)])


def dictionary(codes: np.ndarray, names: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(int32s(codes), strings(names))


def numpy(arr: pa.Array, dtype: type) -> np.ndarray:
    """A null-free numeric array as numpy, read from its buffer (a view, not a copy)."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * width)


def column(path: Path, batch: pa.RecordBatch, name: str) -> pa.Array:
    if name not in batch.schema.names:
        raise StorageError(f"{path}: WAL segment has no column {name!r} "
                           f"(columns {batch.schema.names})")
    return batch.column(name)


def codes(path: Path, batch: pa.RecordBatch, name: str, names: dict[str, int]) -> np.ndarray:
    """A string column of one batch as codes into ``names`` (extended as needed)."""
    col = column(path, batch, name)
    if not pa.types.is_dictionary(col.type):
        if not pa.types.is_string(col.type):
            raise StorageError(f"{path}: WAL column {name!r} is {col.type}, expected "
                               f"string or dictionary of string")
        col = col.dictionary_encode()
    if col.null_count or col.dictionary.null_count:
        raise StorageError(f"{path}: WAL column {name!r} has {col.null_count} null values")
    remap = np.fromiter((names.setdefault(x, len(names)) for x in col.dictionary.to_pylist()),
                        np.int32, len(col.dictionary))
    codes: np.ndarray = remap[numpy(col.indices.cast(pa.int32()), np.int32)]
    return codes


def _joined(pieces: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)
